"""CSV/TSV image-caption datasets: :class:`CsvDataset`, ``build_csv_loader`` and 3.3's ``get_csv_dataset``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from .bad_samples import CSV_ROW_ERROR, DEFAULT_MAX_BAD_FRACTION
from .info import DataInfo
from .map_loader import build_map_loader
from .samples import check_caption, image_from_path, make_pair

_log = logging.getLogger(__name__)


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("CSV datasets need pandas: pip install libreclip[training]") from exc
    return pandas


def read_csv_columns(
    path: str, img_key: str, caption_key: str, sep: str = "\t"
) -> tuple[list[str], list[str], int]:
    """Read the image and caption columns of a CSV file.

    Cells are read as strings (an empty cell is ``''``; caption text such as ``NA`` stays text).
    Bytes that are not UTF-8 are kept as surrogate escapes so only that row is rejected later.
    Lines pandas cannot parse (wrong number of fields) are skipped and counted.

    Returns:
        (image paths, captions, number of unparsable lines)
    """
    pd = _import_pandas()
    kwargs = dict(sep=sep, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")
    bad_lines: list = []
    try:
        df = pd.read_csv(path, on_bad_lines="error", **kwargs)
    except pd.errors.ParserError:
        # The python engine lets us count (and skip) the malformed lines instead of failing the file.
        df = pd.read_csv(path, engine="python", on_bad_lines=lambda line: bad_lines.append(line), **kwargs)
    for key, flag in ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
        if key not in df.columns:
            raise KeyError(
                f"Column {key!r} ({flag}) not found in {path}; columns are {list(df.columns)} "
                f"(separator {sep!r}, set with --csv-separator)"
            )
    if bad_lines:
        _log.warning("Skipped %d unparsable lines in %s", len(bad_lines), path)
    return df[img_key].tolist(), df[caption_key].tolist(), len(bad_lines)


class CsvDataset(Dataset):
    """Image-caption pairs listed in a CSV file (one row per pair, image given by its path).

    ``dataset[i]`` returns ``(transforms(image), tokenizer([caption])[0])`` and raises ``BadSample``
    for a bad row; the loaders use :meth:`load_sample` through ``SafeSamples`` so bad rows are skipped.
    ``bad_rows`` counts lines that could not be parsed at all (they are not part of the dataset).
    """

    def __init__(
        self,
        input_filename: str,
        transforms: Callable | None,
        img_key: str,
        caption_key: str,
        sep: str = "\t",
        tokenizer: Callable | None = None,
    ) -> None:
        _log.debug("Loading csv data from %s.", input_filename)
        self.images, self.captions, self.bad_rows = read_csv_columns(input_filename, img_key, caption_key, sep)
        self.transforms = transforms
        self.tokenize = tokenizer
        self.input_filename = input_filename

    def __len__(self) -> int:
        return len(self.captions)

    def sample_source(self, idx: int) -> str:
        """The file row ``idx`` reads (named in stall reports and per-source timings)."""
        path = self.images[idx]
        return path if isinstance(path, str) and path else f"{self.input_filename} row {idx}"

    def load_sample(self, idx: int) -> tuple[Any, Any]:
        what = f"{self.input_filename} row {idx}"
        caption = check_caption(self.captions[idx], what)
        image = image_from_path(self.images[idx])
        return make_pair(image, caption, self.transforms, self.tokenize, what)

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        return self.load_sample(idx)


def build_csv_loader(
    path: str,
    preprocess: Callable | None,
    *,
    img_key: str = "filepath",
    caption_key: str = "title",
    sep: str = "\t",
    tokenizer: Callable | None = None,
    **loader_kwargs: Any,
) -> DataInfo:
    """A resumable CSV loader; ``loader_kwargs`` go to :func:`map_loader.build_map_loader`."""
    dataset = CsvDataset(path, preprocess, img_key=img_key, caption_key=caption_key, sep=sep, tokenizer=tokenizer)
    fixed_bad = {CSV_ROW_ERROR: dataset.bad_rows} if dataset.bad_rows else None
    return build_map_loader(dataset, fixed_bad=fixed_bad, description=path, **loader_kwargs)


def get_csv_dataset(
    args: Any, preprocess_fn: Callable, is_train: bool, epoch: int = 0, tokenizer: Callable | None = None
) -> DataInfo:
    """3.3's namespace adapter: CSV from ``args.train_data`` / ``args.val_data``."""
    path = args.train_data if is_train else args.val_data
    assert path, "CSV dataset needs --train-data / --val-data"
    return build_csv_loader(
        path,
        preprocess_fn,
        img_key=getattr(args, "csv_img_key", "filepath"),
        caption_key=getattr(args, "csv_caption_key", "title"),
        sep=getattr(args, "csv_separator", "\t"),
        tokenizer=tokenizer,
        **loader_settings(args, is_train, epoch),
    )


def loader_settings(args: Any, is_train: bool, epoch: int) -> dict:
    """The loader settings every namespace adapter reads from ``args`` (with 3.3's defaults)."""
    return dict(
        batch_size=getattr(args, "batch_size", 64),
        workers=getattr(args, "workers", 4),
        is_train=is_train,
        seed=getattr(args, "seed", 0),
        epoch=epoch,
        rank=getattr(args, "rank", 0),
        world_size=getattr(args, "world_size", 1),
        distributed=getattr(args, "distributed", False),
        max_bad_fraction=getattr(args, "data_max_bad_fraction", DEFAULT_MAX_BAD_FRACTION),
        timeout=getattr(args, "data_timeout", 0) or 0,
    )
