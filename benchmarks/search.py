"""Search layer throughput and latency, measured in one run on one generated corpus.

Setup (deterministic by --seed): a synthetic corpus of --pages pages (titles and ~120-word texts drawn from a
Zipf-distributed vocabulary of made-up words) and --queries queries of 2-4 words taken from random pages; a set
of --images generated pictures (coloured shapes on textured backgrounds) and augmented copies (crop, resize,
colour jitter, JPEG) as image queries.

Figures:
1. BM25 queries/s: ours (`LocalTextBackend.search(q, 10)`: bm25s scores + top-10 hits with page text) vs
   `rank_bm25.BM25Okapi` (`get_scores` + top-10 argsort) on the same tokens (our tokenizer) and queries. Both
   single-query, one thread. The top-1 agreement and top-10 overlap of the two rankings are printed
   as a sanity check; they differ by design (bm25s scores Lucene's idf, log(1 + (N - df + 0.5)/(df + 0.5)),
   BM25Okapi a floored Robertson idf, so frequent words weigh differently).
2. Local image search queries/s (`LocalImageBackend.search(ImageQuery(jpeg bytes), 5)`, builtin embedder, faiss),
   with the top-1 accuracy on the augmented queries.
3. Cache-hit latency p50/p99 in-process: the factory's full text stack (SQLite cache -> in-flight collapse ->
   backend) with caching on, one warmed identical request repeated.
4. Service requests/s: `mmsearch-r1 search serve` in a subprocess on 127.0.0.1 (local backends + SQLite cache,
   token auth) and 32 client threads, each with its own httpx client, sending --service-requests requests in all
   to `/v1/search/text` (queries cycling over a warmed set, so this is the service overhead on cache hits) and
   then to `/v1/text_search` (search + summarize server-side).
Targets: BM25 >= 10x rank_bm25; cache-hit p99 < 5 ms.

Usage: python benchmarks/search.py [--pages 3000] [--queries 300] [--images 300] [--seed 0]
Prints a table, then ONE JSON line with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_corpus(n_pages: int, n_queries: int, seed: int) -> tuple[list, list[str]]:
    from mmsearch_r1.search.base import Page

    rng = random.Random(seed)
    syll = [
        "ka",
        "lo",
        "mi",
        "ra",
        "te",
        "su",
        "no",
        "vi",
        "po",
        "de",
        "xa",
        "qu",
        "ben",
        "tor",
        "lin",
        "gar",
    ]
    vocab = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(12000)})
    weights = [1.0 / (r + 1) ** 1.05 for r in range(len(vocab))]
    rng.shuffle(vocab)
    pages = []
    for i in range(n_pages):
        words = rng.choices(vocab, weights, k=rng.randint(80, 160))
        title = " ".join(rng.choices(vocab, weights, k=3)).title()
        text = ". ".join(" ".join(words[j : j + 12]).capitalize() for j in range(0, len(words), 12)) + "."
        pages.append(Page(f"http://corpus.test/page/{i}", title, text))
    queries = []
    for _ in range(n_queries):
        words = pages[rng.randrange(n_pages)].text.replace(".", "").lower().split()
        queries.append(" ".join(rng.sample(words, rng.randint(2, 4))))
    return pages, queries


def bench_bm25(pages: list, queries: list[str], index_dir: Path) -> dict[str, float]:
    from rank_bm25 import BM25Okapi

    from mmsearch_r1.search.local_text import LocalTextBackend, build_text_index, tokenize

    build_text_index(pages, index_dir / "text")
    ours = LocalTextBackend(str(index_dir))
    ours.search(queries[0], 10)  # warm
    t0 = time.perf_counter()
    top_ours = [ours.search(q, 10) for q in queries]
    ours_s = time.perf_counter() - t0

    ref = BM25Okapi([tokenize(p.title + " " + p.text) for p in pages])
    t0 = time.perf_counter()
    top_ref = []
    for q in queries:
        scores = ref.get_scores(tokenize(q))
        top_ref.append(np.argsort(-scores, kind="stable")[:10])
    ref_s = time.perf_counter() - t0
    agree = sum(
        1 for h, r in zip(top_ours, top_ref, strict=True) if h and h[0].url == pages[int(r[0])].url
    ) / len(queries)
    overlap = statistics.mean(
        len({h.url for h in hs} & {pages[int(i)].url for i in r}) / 10
        for hs, r in zip(top_ours, top_ref, strict=True)
    )
    return {
        "bm25_top10_overlap": overlap,
        "bm25_ours_qps": len(queries) / ours_s,
        "bm25_rank_bm25_qps": len(queries) / ref_s,
        "bm25_speedup": ref_s / ours_s,
        "bm25_top1_agreement": agree,
    }


def _picture(rng: random.Random, size: int = 160):
    from PIL import Image, ImageDraw

    bg = tuple(rng.randrange(256) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 6)):
        x, y = rng.randrange(size), rng.randrange(size)
        r = rng.randint(10, 50)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x - r, y - r, x + r, y + r), fill=fill)
    return img


def _augment(img, rng: random.Random) -> bytes:
    from PIL import ImageEnhance

    w, h = img.size
    c = rng.randint(0, w // 10)
    out = img.crop((c, c, w - c, h - c)).resize((rng.randint(100, 220),) * 2)
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.2))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=rng.randint(60, 90))
    return buf.getvalue()


def bench_images(n: int, seed: int, index_dir: Path) -> dict[str, float]:
    from mmsearch_r1.search.base import ImageQuery
    from mmsearch_r1.search.local_image import LocalImageBackend, build_image_index
    from mmsearch_r1.types import ImageData

    rng = random.Random(seed + 1)
    src = index_dir / "img_src"
    src.mkdir(parents=True, exist_ok=True)
    imgs = []
    with open(src / "images.jsonl", "w") as f:
        for i in range(n):
            img = _picture(rng)
            img.save(src / f"{i}.png")
            imgs.append(img)
            f.write(
                json.dumps({"image": f"{i}.png", "title": f"Picture {i}", "url": f"http://img.test/{i}"})
                + "\n"
            )
    t0 = time.perf_counter()
    build_image_index(src / "images.jsonl", index_dir / "image")
    build_s = time.perf_counter() - t0
    backend = LocalImageBackend(str(index_dir))
    queries = [(i, _augment(imgs[i], rng)) for i in rng.sample(range(n), min(n, 200))]
    backend.search(ImageQuery(image=ImageData(bytes=queries[0][1])), 5)  # warm
    t0 = time.perf_counter()
    correct = 0
    for i, jpeg in queries:
        hits = backend.search(ImageQuery(image=ImageData(bytes=jpeg)), 5)
        correct += int(bool(hits) and hits[0].url == f"http://img.test/{i}")
    dt = time.perf_counter() - t0
    return {
        "image_qps": len(queries) / dt,
        "image_top1": correct / len(queries),
        "image_index_build_s": build_s,
    }


def bench_cache(index_dir: Path, queries: list[str], reps: int) -> dict[str, float]:
    from mmsearch_r1.config import SearchConfig
    from mmsearch_r1.search.factory import build_text_pipeline

    cfg = SearchConfig(
        text_backend={"type": "local", "index_dir": str(index_dir), "cache": True},
        cache_path=str(index_dir / "bench_cache.sqlite"),
    )
    backend, _, _ = build_text_pipeline(cfg)
    q = queries[0]
    t0 = time.perf_counter()
    first = backend.search(q, 5)
    miss_s = time.perf_counter() - t0
    lat = []
    for _ in range(reps):
        t0 = time.perf_counter()
        hits = backend.search(q, 5)
        lat.append(time.perf_counter() - t0)
    assert [h.url for h in hits] == [h.url for h in first]
    assert backend.counters.get("cache_hits") >= reps
    lat.sort()
    return {
        "cache_miss_ms": miss_s * 1e3,
        "cache_hit_p50_ms": lat[len(lat) // 2] * 1e3,
        "cache_hit_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
    }


def bench_service(index_dir: Path, queries: list[str], n_requests: int, clients: int) -> dict[str, float]:
    import httpx

    cfg = index_dir / "svc.yaml"
    cfg.write_text(
        "search:\n  top_k: 3\n"
        f"  text_backend: {{type: local, index_dir: '{index_dir}', cache: true}}\n"
        f"  image_backend: {{type: local, index_dir: '{index_dir}'}}\n"
        f"  cache_path: '{index_dir / 'svc_cache.sqlite'}'\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "bench-token"
    env = {**os.environ, "BENCH_SVC_TOKEN": token}
    cmd = [
        sys.executable,
        "-m",
        "mmsearch_r1.cli",
        "search",
        "serve",
        "--config",
        str(cfg),
        "--port",
        str(port),
    ]
    cmd += ["--token-env", "BENCH_SVC_TOKEN", "--log-level", "warning", "--workers", str(clients)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"search service did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)
        warm = queries[:64]
        with httpx.Client(timeout=60, headers=headers) as c:
            for q in warm:  # fill the server's cache
                c.post(url + "/v1/search/text", json={"query": q, "k": 5}).raise_for_status()

        for path, body_of in (
            ("/v1/search/text", lambda q: {"query": q, "k": 5}),
            ("/v1/text_search", lambda q: {"query": q, "k": 3}),
        ):
            per = max(1, n_requests // clients)
            errors = [0]
            lock = threading.Lock()
            start = threading.Barrier(clients + 1)

            def worker(
                w: int, path=path, body_of=body_of, per=per, errors=errors, lock=lock, start=start
            ) -> None:
                with httpx.Client(timeout=60, headers=headers) as c:
                    start.wait()
                    for j in range(per):
                        r = c.post(url + path, json=body_of(warm[(w * per + j) % len(warm)]))
                        if r.status_code != 200:
                            with lock:
                                errors[0] += 1

            threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
            for t in threads:
                t.start()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            key = "service_raw" if path == "/v1/search/text" else "service_pipeline"
            out[f"{key}_rps"] = per * clients / dt
            out[f"{key}_errors"] = errors[0]
        stats = httpx.get(url + "/stats", headers=headers, timeout=10).json()
        out["service_cache_hits"] = stats["backends"]["text"].get("cache_hits", 0)
        out["service_p50_ms"] = stats["endpoints"]["/v1/search/text"]["latency_p50_s"] * 1e3
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--cache-reps", type=int, default=2000)
    ap.add_argument("--service-requests", type=int, default=640)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        d = Path(tmp)
        pages, queries = make_corpus(args.pages, args.queries, args.seed)
        res: dict[str, float] = {"pages": len(pages), "queries": len(queries), "images": args.images}
        res.update(bench_bm25(pages, queries, d))
        res.update(bench_images(args.images, args.seed, d))
        res.update(bench_cache(d, queries, args.cache_reps))
        res.update(bench_service(d, queries, args.service_requests, args.clients))
    res["target_bm25_10x_ok"] = res["bm25_speedup"] >= 10
    res["target_cache_p99_5ms_ok"] = res["cache_hit_p99_ms"] < 5

    rows = [
        ("corpus", f"{args.pages} pages, {args.queries} queries, {args.images} images, seed {args.seed}"),
        ("BM25 ours (bm25s, LocalTextBackend)", f"{res['bm25_ours_qps']:.0f} q/s"),
        ("BM25 rank_bm25 (BM25Okapi)", f"{res['bm25_rank_bm25_qps']:.0f} q/s"),
        (
            "BM25 speedup (target >= 10x)",
            f"{res['bm25_speedup']:.1f}x  top-1 agree {res['bm25_top1_agreement']:.2f}, top-10 overlap {res['bm25_top10_overlap']:.2f}",
        ),
        ("local image search", f"{res['image_qps']:.1f} q/s, top-1 {res['image_top1']:.3f}"),
        ("cache miss (first request)", f"{res['cache_miss_ms']:.2f} ms"),
        (
            "cache hit p50 / p99 (target < 5 ms)",
            f"{res['cache_hit_p50_ms']:.3f} / {res['cache_hit_p99_ms']:.3f} ms",
        ),
        (f"service /v1/search/text, {args.clients} clients", f"{res['service_raw_rps']:.0f} req/s"),
        (f"service /v1/text_search, {args.clients} clients", f"{res['service_pipeline_rps']:.0f} req/s"),
    ]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
