"""Class folders as data: labels in torchvision's order, class-name and template files, FLYP captions."""

import pytest
from finetune_fixtures import FOLDERS
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import to_tensor

from open_clip_train.data.class_folders import class_folders, labelled_images, read_classnames, read_templates
from open_clip_train.data.imagefolder_captions import ImageFolderCaptions, build_imagefolder_caption_loader


def test_labels_follow_imagefolder_and_the_training_classes(colour_data, tmp_path):
    classes = class_folders(colour_data["train"])
    assert classes == ImageFolder(colour_data["train"]).classes == sorted(FOLDERS)
    assert labelled_images(colour_data["val"], classes) == ImageFolder(colour_data["val"]).samples
    # a test folder missing a class keeps the training labels
    (tmp_path / "c2_blue").symlink_to(colour_data["root"] / "val" / "c2_blue")
    assert {label for _, label in labelled_images(str(tmp_path), classes)} == {2}
    (tmp_path / "c9_purple").mkdir()
    with pytest.raises(ValueError, match=r"--val-data .*\['c9_purple'\] are not classes of the training data"):
        labelled_images(str(tmp_path), classes)


def test_classnames_and_templates_files(colour_data, tmp_path):
    assert read_classnames(colour_data["classnames"], sorted(FOLDERS)) == [FOLDERS[f] for f in sorted(FOLDERS)]
    assert read_classnames(None, ["a_b"]) == ["a_b"]
    assert read_templates(colour_data["templates"]) == ["a {} square.", "a photo of something {}.", "{}"]
    assert len(read_templates(None)) == 80  # the OpenAI ImageNet templates
    bad = tmp_path / "bad.txt"
    for text, match in (("a {} and {}\n", "line 1: a template needs exactly one"), ("\n\n", "has no templates"),
                        ("a {0} {1}\n", "line 1")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_templates(str(bad))
    bad.write_text("c0_red red\n")
    with pytest.raises(ValueError, match="line 1: expected 'folder<TAB>class name'"):
        read_classnames(str(bad), ["c0_red"])
    bad.write_text("c0_red\tred\n")
    with pytest.raises(ValueError, match=r"no name for class folder\(s\) \['c1_green'\]"):
        read_classnames(str(bad), ["c0_red", "c1_green"])


def test_captions_are_random_templates_reproducible_per_sample(colour_data):
    def captions(seed):
        info = build_imagefolder_caption_loader(
            colour_data["train"], to_tensor, classnames_file=colour_data["classnames"],
            templates_file=colour_data["templates"], batch_size=16, workers=0, is_train=True, seed=seed,
            pin_memory=False)
        info.set_epoch(0)
        texts = []
        for batch in info.dataloader:
            texts += list(batch[1])
        return texts

    first = captions(0)
    assert len(first) == 64 and first == captions(0)
    assert first != captions(1)
    expected = {t.format(c) for t in ("a {} square.", "a photo of something {}.", "{}") for c in FOLDERS.values()}
    assert set(first) == expected  # every template and class name appears, nothing else


def test_dataset_item(colour_data):
    classes = sorted(FOLDERS)
    dataset = ImageFolderCaptions(labelled_images(colour_data["val"], classes), ["red", "green", "blue", "yellow"],
                                  ["{} thing"], transform=None, tokenizer=None)
    image, caption = dataset[0]
    assert image.size == (32, 32) and caption == "red thing"
