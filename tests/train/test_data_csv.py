"""CSV and synthetic loaders, ImageNet folders, dataset-type dispatch, DataInfo/SharedEpoch and the
max-bad-fraction check."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

try:
    from .test_data_helpers import (
        caption_for,
        fake_tokenizer,
        image_bytes,
        plain_transform,
        run_epochs,
        wds_args,
    )
except ImportError:
    from test_data_helpers import caption_for, fake_tokenizer, image_bytes, plain_transform, run_epochs, wds_args

from torchvision import transforms as T

from open_clip_train.data import (
    BadSample,
    CsvDataset,
    DataInfo,
    DataQualityError,
    SharedEpoch,
    SyntheticDataset,
    build_map_loader,
    get_csv_dataset,
    get_data,
    get_dataset_fn,
    get_synthetic_dataset,
    get_wds_dataset,
)


def _write_csv(root, rows, sep="\t", header=("filepath", "title")) -> str:
    path = os.path.join(root, "data.csv")
    with open(path, "wb") as f:
        f.write(sep.join(header).encode() + b"\n")
        for row in rows:
            f.write(row if isinstance(row, bytes) else row.encode())
            f.write(b"\n")
    return path


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory):
    """20 rows; rows 3..8 are bad in one way each, plus one unparsable line. Returns (path, good ids, counts)."""
    root = str(tmp_path_factory.mktemp("csv"))
    rows, good = [], []
    for i in range(20):
        img = os.path.join(root, f"{i}.{'png' if i % 2 else 'jpg'}")
        with open(img, "wb") as f:
            f.write(image_bytes(i, "PNG" if i % 2 else "JPEG"))
        cap = caption_for(i)
        if i == 3:
            img = os.path.join(root, "missing.jpg")  # missing_image
        elif i == 4:
            open(img, "wb").close()  # zero-byte file: empty_member
        elif i == 5:
            with open(img, "wb") as f:
                f.write(b"\x89PNG garbage")  # image_decode_error
        elif i == 6:
            cap = ""  # missing_caption
        elif i == 7:
            rows.append(img.encode() + b"\t\xff\xfe bad caption")  # caption_encoding_error
            continue
        elif i == 8:
            rows.append(f"{img}\t{cap}\textra field")  # csv_row_error
            continue
        else:
            good.append(i)
        rows.append(f"{img}\t{cap}")
    counts = {
        "missing_image": 1, "empty_member": 1, "image_decode_error": 1, "missing_caption": 1,
        "caption_encoding_error": 1, "csv_row_error": 1,
    }
    return _write_csv(root, rows), good, counts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_csv_bad_rows_skipped_and_counted(bad_csv, workers):
    path, good, counts = bad_csv
    args = wds_args(val_data=path, workers=workers, batch_size=4, data_max_bad_fraction=0.5)
    info = get_csv_dataset(args, plain_transform(), is_train=False, tokenizer=fake_tokenizer)
    assert info.dataloader.num_samples == 19  # the unparsable line is not a row
    ids, images, _ = run_epochs(info, 1)
    assert ids == good  # evaluation keeps file order
    assert info.bad_sample_counts() == counts
    assert all(x.shape[1:] == (3, 16, 16) for x in images)


@pytest.mark.timeout(60)
def test_csv_train_epoch_and_fraction_limit(bad_csv):
    path, good, _ = bad_csv
    args = wds_args(train_data=path, workers=0, batch_size=3, data_max_bad_fraction=0.5)
    info = get_csv_dataset(args, plain_transform(), is_train=True, tokenizer=fake_tokenizer)
    ids, images, _ = run_epochs(info, 1)
    assert info.dataloader.num_batches == 6 and set(ids) <= set(good)
    # bad rows are replaced by good ones, so every training batch stays full
    assert [len(x) for x in images] == [3] * 6
    assert len(set(ids)) >= 18 - 5  # the scheduled good rows, each once, plus replacements
    # each scheduled bad row is counted once (and the unparsable line), never the replacements
    assert sum(info.bad_sample_counts().values()) <= 6
    args.data_max_bad_fraction = 0.1  # 6 bad of 20 read
    info = get_csv_dataset(args, plain_transform(), is_train=True, tokenizer=fake_tokenizer)
    with pytest.raises(DataQualityError, match="data_max_bad_fraction=0.1"):
        run_epochs(info, 1)


def test_csv_columns_and_separator(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(image_bytes(1))
    path = _write_csv(str(tmp_path), [f"{img},{caption_for(1)}"], sep=",", header=("img", "cap"))
    ds = CsvDataset(path, plain_transform(), img_key="img", caption_key="cap", sep=",", tokenizer=fake_tokenizer)
    image, text = ds[0]
    assert image.shape == (3, 16, 16) and text.tolist() == [1, len(caption_for(1))]
    with pytest.raises(KeyError, match=r"Column 'filepath' \(--csv-img-key\) not found.*\['img', 'cap'\]"):
        CsvDataset(path, None, img_key="filepath", caption_key="cap", sep=",")


class _HalfBad:
    """Map-style dataset whose odd items are bad."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def load_sample(self, i):
        if i % 2:
            raise BadSample("missing_caption", f"item {i}")
        return torch.zeros(1), torch.tensor([i])


@pytest.mark.timeout(60)
def test_fraction_checked_once_1000_samples_were_read():
    info = build_map_loader(_HalfBad(4000), batch_size=100, workers=0, is_train=True, max_bad_fraction=0.4)
    seen = 0
    with pytest.raises(DataQualityError, match="of 1000 samples read"):
        for _ in info.dataloader:
            seen += 1
    assert seen == 9  # error raised on the 10th batch, long before the end (40 batches)
    info = build_map_loader(_HalfBad(400), batch_size=100, workers=0, is_train=True, max_bad_fraction=0.6)
    assert len(run_epochs(info, 1)[1]) == 4
    assert info.bad_sample_counts() == {"missing_caption": 200}


def test_synthetic_train_and_val_fixes():
    args = wds_args(dataset_type="synthetic", train_num_samples=None, batch_size=4)
    val_tf = T.Compose([T.Resize(20), T.CenterCrop(20), T.ToTensor()])  # Resize.size is an int (3.3 crash)
    val = get_synthetic_dataset(args, val_tf, is_train=False, tokenizer=fake_tokenizer)
    assert len(val.dataloader.dataset) == 100
    images, texts = next(iter(val.dataloader))
    assert images.shape == (4, 3, 20, 20) and texts.shape == (4, 2)
    ds = SyntheticDataset(transform=None, image_size=8, dataset_size=3)
    image, text = ds[2]
    assert image.shape == (3, 8, 8) and float(image.abs().sum()) == 0.0 and text == "Dummy caption"
    args.train_num_samples = 10
    data = get_data(args, (T.Compose([T.RandomResizedCrop(12), T.ToTensor()]), val_tf), tokenizer=fake_tokenizer)
    assert list(data) == ["train"]
    assert data["train"].dataloader.num_batches == 2 and data["train"].dataloader.num_samples == 10


def test_dataset_type_dispatch():
    assert get_dataset_fn("/x/a.tsv", "auto") is get_csv_dataset
    assert get_dataset_fn("/x/a.csv", "auto") is get_csv_dataset
    assert get_dataset_fn("/x/{0..9}.tar", "auto") is get_wds_dataset
    assert get_dataset_fn("pipe:curl x.tar -", "webdataset") is get_wds_dataset
    assert get_dataset_fn(None, "synthetic") is get_synthetic_dataset
    with pytest.raises(ValueError, match="failed for extension parquet"):
        get_dataset_fn("/x/a.parquet", "auto")
    with pytest.raises(ValueError, match="Unsupported dataset type: tfrecord"):
        get_dataset_fn("/x/a.tar", "tfrecord")


def test_imagenet_folders_and_key_order(tmp_path):
    val = tmp_path / "val"
    v2 = tmp_path / "v2" / "ImageNetV2-matched-frequency"
    for name in ["n01", "n02", "n10"]:
        (val / name).mkdir(parents=True)
        Image.new("RGB", (10, 10)).save(val / name / "x.png")
    for idx in [0, 2, 10]:
        (v2 / str(idx)).mkdir(parents=True)
        Image.new("RGB", (10, 10)).save(v2 / str(idx) / "x.jpeg")
    args = wds_args(imagenet_val=str(val), imagenet_v2=str(tmp_path / "v2"), dataset_type="synthetic",
                    train_num_samples=4, batch_size=8)
    data = get_data(args, (plain_transform(), plain_transform(8)))
    assert list(data) == ["train", "imagenet-val", "imagenet-v2"]
    _, labels = next(iter(data["imagenet-val"].dataloader))
    assert labels.tolist() == [0, 1, 2]
    images, labels = next(iter(data["imagenet-v2"].dataloader))
    assert sorted(labels.tolist()) == [0, 2, 10] and images.shape == (3, 3, 8, 8)


def test_data_info_set_epoch_and_shared_epoch():
    class Sampler:
        epoch = None

        def set_epoch(self, e):
            self.epoch = e

    shared, sampler = SharedEpoch(3), Sampler()
    assert shared.get_value() == 3
    info = DataInfo(dataloader=[], sampler=sampler, shared_epoch=shared)
    info.set_epoch(5)
    assert shared.get_value() == 5 and sampler.epoch == 5
    assert DataInfo(dataloader=[]).bad_sample_counts() == {}


def test_distributed_csv_sampler_exposed(bad_csv):
    path, _, _ = bad_csv
    args = wds_args(train_data=path, distributed=True, world_size=2, rank=1, batch_size=2, data_max_bad_fraction=0.5)
    info = get_csv_dataset(args, None, is_train=True)
    assert info.sampler is not None and info.dataloader.num_batches == 5  # 19 rows -> 10 per rank
    info.set_epoch(4)
    assert info.shared_epoch.get_value() == 4
