"""Test helper: lay files out the way huggingface_hub caches a repo, so it finds them offline."""

import shutil

from safetensors.torch import save_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache, repo_id, files, commit=COMMIT, ref="main", missing=()):
    """Write models--org--repo/refs/<ref> (-> commit) and snapshots/<commit>/<name> for each file.

    ``files`` maps a file name to bytes, a dict of tensors (saved as safetensors) or a Path to copy.
    ``missing`` names files the repo is known not to have (``.no_exist/<commit>/<name>`` markers, which
    is how the client remembers a 404 and answers "absent" offline instead of failing).
    """
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = snap / name
        if isinstance(content, dict):
            save_file(content, str(path))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            shutil.copyfile(content, path)
    no_exist = repo_dir / ".no_exist" / commit
    for name in missing:
        no_exist.mkdir(parents=True, exist_ok=True)
        (no_exist / name).touch()
    return snap
