"""Class-per-folder image data (torchvision's ImageFolder layout), class-name files and prompt templates.

Owns how a folder of class sub-folders becomes labelled image paths (labels in sorted folder order,
exactly as torchvision's ``ImageFolder`` assigns them), how other folders (validation, shifted test
sets) are labelled with the *training* folder's indices, and how the ``--classnames`` and
``--templates`` files are read. Used by the fine-tuning command and by ``--dataset-type imagefolder``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

Template = str | Callable[[str], str]


def class_folders(root: str, flag: str = "--train-data") -> list[str]:
    """Sorted class sub-folder names of ``root`` (index = label, as torchvision assigns them)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{flag} {root}: directory not found; pass a folder with one sub-folder per class.")
    try:
        classes, _ = find_classes(root)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{flag} {root}: no class sub-folders; put each class's images in "
                                f"{root}/<class>/.") from e
    return classes


def labelled_images(root: str, classes: Sequence[str], flag: str = "--val-data") -> list[tuple[str, int]]:
    """``(path, label)`` for every image under ``root/<class>/``, labelled by ``classes``' order.

    ``root`` may hold a subset of ``classes`` (a test set missing a class keeps the training labels),
    but a sub-folder that is not one of ``classes`` is an error: its images could not be scored.
    """
    present = class_folders(root, flag)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"{flag} {root}: class folder(s) {unknown[:5]} are not classes of the training data "
                         f"({len(classes)} classes, e.g. {list(classes[:5])}); remove them or add them to training.")
    class_to_idx = {name: i for i, name in enumerate(classes) if name in present}
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(f"{flag} {root}: no images ({', '.join(IMG_EXTENSIONS)}) in its class folders.")
    return samples


def read_classnames(path: str | None, folders: Sequence[str]) -> list[str]:
    """Human-readable class names in ``folders`` order: from a ``folder<TAB>class name`` file, else the folder names.

    Lines naming folders that do not exist are ignored (one file can serve several datasets); a folder
    without a line is an error.
    """
    if path is None:
        return list(folders)
    names: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            folder, sep, name = line.partition("\t")
            if not sep or not folder or not name.strip():
                raise ValueError(f"--classnames {path} line {number}: expected 'folder<TAB>class name', got {line!r}.")
            if folder in names:
                raise ValueError(f"--classnames {path} line {number}: folder {folder!r} is listed twice.")
            names[folder] = name.strip()
    missing = [f for f in folders if f not in names]
    if missing:
        raise ValueError(f"--classnames {path}: no name for class folder(s) {missing[:5]}; "
                         "add a 'folder<TAB>class name' line for each.")
    return [names[f] for f in folders]


def read_templates(path: str | None) -> list[Template]:
    """Prompt templates, one per line with ``{}`` for the class name; default: the OpenAI ImageNet templates."""
    if path is None:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    templates: list[Template] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                filled = line.format("\0")
            except (IndexError, KeyError, ValueError):
                filled = ""
            if filled.count("\0") != 1:
                raise ValueError(f"--templates {path} line {number}: a template needs exactly one '{{}}' for the "
                                 f"class name (literal braces as '{{{{' and '}}}}'), got {line!r}.")
            templates.append(line)
    if not templates:
        raise ValueError(f"--templates {path}: the file has no templates; "
                         "write one per line, e.g. 'a photo of a {}.'")
    return templates


def fill_template(template: Template, classname: str) -> str:
    """The prompt for one class: ``str.format`` for strings, a call for callables."""
    return template.format(classname) if isinstance(template, str) else template(classname)
