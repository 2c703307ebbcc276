"""Download path overheads, measured against a local HTTP server (prints figures, asserts nothing).

Compares `download_pretrained_from_url` (progress bar, streaming sha256, temp file + rename) with a
bare `urlopen` + `shutil.copyfileobj` copy of the same file, and times the cache-hit check (a full
sha256 of the cached file, as in 3.3) and the safetensors header check used for Hub files.

Run: .venv/bin/python benchmarks/pretrained_download.py [--mb 64]
"""

import argparse
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
import time
import urllib.request

import torch
from safetensors.torch import save_file

from open_clip.pretrained import download_pretrained_from_url
from open_clip.pretrained_cache import safetensors_file_ok, sha256_file


def _serve(payload: bytes, path: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def _best_of(n, fn):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = os.urandom(args.mb << 20)
    digest = hashlib.sha256(payload).hexdigest()
    httpd, url = _serve(payload, f"/openaipublic/clip/models/{digest}/weights.pt")
    with tempfile.TemporaryDirectory() as tmp:

        def ours():
            cache = tempfile.mkdtemp(dir=tmp)
            download_pretrained_from_url(url, cache_dir=cache)
            shutil.rmtree(cache)

        def bare():
            with urllib.request.urlopen(url) as src, open(os.path.join(tmp, "bare.bin"), "wb") as dst:
                shutil.copyfileobj(src, dst, 8192)

        t_ours, t_bare = _best_of(args.repeats, ours), _best_of(args.repeats, bare)
        cached = os.path.join(tmp, "cached")
        download_pretrained_from_url(url, cache_dir=cached)
        t_hit = _best_of(args.repeats, lambda: download_pretrained_from_url(url, cache_dir=cached))
        t_sha = _best_of(args.repeats, lambda: sha256_file(os.path.join(cached, "weights.pt")))
        st = os.path.join(tmp, "w.safetensors")
        save_file({"w": torch.zeros(args.mb << 18)}, st)  # same size in float32
        t_header = _best_of(args.repeats, lambda: safetensors_file_ok(st))
    httpd.shutdown()
    mb = args.mb
    print(f"payload: {mb} MiB, best of {args.repeats} (shared, noisy machine)")
    print(f"download_pretrained_from_url: {t_ours:.3f} s ({mb / t_ours:.0f} MiB/s)")
    print(f"bare copy, 8 KiB reads (3.3): {t_bare:.3f} s ({mb / t_bare:.0f} MiB/s)")
    print(f"ratio ours/bare:              {t_ours / t_bare:.2f}x")
    print(f"cache hit (sha256 verify):    {t_hit:.3f} s; sha256 alone {t_sha:.3f} s")
    print(f"safetensors header check:     {t_header * 1e6:.0f} us")


if __name__ == "__main__":
    main()
