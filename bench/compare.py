"""python-diskcache's side of bench/compare.sh: the same workloads as examples/compare.rs.

Run by compare.sh inside a virtualenv that has diskcache installed. Prints JSON lines
{"side", "bench", "stat", "value"}; `compare.py table FILE...` prints the comparison table.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

RANDOM_MULT = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1


def emit(bench, stat, value):
    print(json.dumps({"side": "python-diskcache", "bench": bench, "stat": stat, "value": round(value, 4)}))


def median_us(total, batch, op):
    means = []
    for b in range(total // batch):
        start = time.perf_counter()
        for i in range(b * batch, (b + 1) * batch):
            op(i)
        means.append((time.perf_counter() - start) * 1e6 / batch)
    means.sort()
    return means[len(means) // 2]


def headline():
    import diskcache

    with tempfile.TemporaryDirectory() as tmp:
        cache = diskcache.Cache(tmp)
        keys = [f"key{i}" for i in range(1000)]
        value = "v" * 100
        emit("set", "median_us", median_us(20_000, 100, lambda i: cache.set(keys[i % 1000], value)))

        def get(i):
            assert cache.get(keys[i % 1000]) is not None

        emit("get", "median_us", median_us(200_000, 1000, get))
        absent = [f"absent{i}" for i in range(1000)]
        emit("get_miss", "median_us", median_us(200_000, 1000, lambda i: cache.get(absent[i % 1000])))

        def get_or_load(i):
            v = cache.get(keys[i % 1000])
            if v is None:
                cache.set(keys[i % 1000], "")

        emit("get_or_load_hit", "median_us", median_us(200_000, 1000, get_or_load))
        cache.close()
    with tempfile.TemporaryDirectory() as fresh:
        start = time.perf_counter()
        children = [subprocess.Popen([sys.executable, __file__, "gol-child", fresh]) for _ in range(8)]
        for c in children:
            if c.wait() != 0:
                raise SystemExit("gol child failed")
        emit("gol_8proc", "ops_per_s", 8 * 20_000 / (time.perf_counter() - start))


def gol_child(path):
    import diskcache

    cache = diskcache.Cache(path)
    value = "v" * 100
    for i in range(20_000):
        key = f"key{i % 1000}"
        if cache.get(key) is None:
            cache.set(key, value)


def core(procs):
    import diskcache

    with tempfile.TemporaryDirectory() as tmp:
        cache = diskcache.Cache(tmp)
        for k in range(100):
            cache.set(f"key{k}", "v" * 100)
        cache.close()
        start = time.perf_counter()
        children = [
            subprocess.Popen([sys.executable, __file__, "core-child", tmp, str(p)], stdout=subprocess.PIPE, text=True)
            for p in range(procs)
        ]
        samples = [[], [], []]
        for c in children:
            out, _ = c.communicate()
            for line in out.splitlines():
                op, us = line.split()
                samples[int(op)].append(float(us))
        wall = time.perf_counter() - start
    emit(f"core_{procs}p", "ops_per_s", sum(map(len, samples)) / wall)
    for name, s in zip(["get", "set", "delete"], samples):
        s.sort()
        for stat, q in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]:
            emit(f"core_{procs}p_{name}", f"{stat}_us", s[min(int(len(s) * q), len(s) - 1)])


def core_child(path, seed):
    import diskcache

    cache = diskcache.Cache(path)
    value = "v" * 100
    rng = (seed * RANDOM_MULT) & MASK | 1
    out = []
    for _ in range(20_000):
        rng ^= (rng << 13) & MASK
        rng ^= rng >> 7
        rng ^= (rng << 17) & MASK
        key = f"key{rng % 100}"
        roll = (rng >> 32) % 100
        start = time.perf_counter()
        if roll < 90:
            cache.get(key)
            op = 0
        elif roll < 99:
            cache.set(key, value)
            op = 1
        else:
            cache.delete(key)
            op = 2
        out.append(f"{op} {(time.perf_counter() - start) * 1e6:.3f}")
    sys.stdout.write("\n".join(out) + "\n")


def table(paths):
    rows = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                rows.setdefault((r["bench"], r["stat"]), {})[r["side"]] = r["value"]
    print(f"| {'benchmark':<24} | {'stat':<10} | {'dbx-concurio':>13} | {'python-diskcache':>16} | {'ratio':>7} |")
    print(f"|{'-' * 26}|{'-' * 12}|{'-' * 15}:|{'-' * 18}:|{'-' * 8}:|")
    for (bench, stat), sides in rows.items():
        ours, theirs = sides.get("dbx-concurio"), sides.get("python-diskcache")
        ratio = ""
        if ours and theirs:
            # "×" = how many times better we are: fewer µs, or more ops/s.
            better = theirs / ours if stat.endswith(("_us", "_ms")) else ours / theirs
            ratio = f"{better:.1f}×"
        fmt = lambda v: "" if v is None else (f"{v:,.0f}" if v >= 1000 else f"{v:.3f}")
        print(f"| {bench:<24} | {stat:<10} | {fmt(ours):>13} | {fmt(theirs):>16} | {ratio:>7} |")


def engine_table(paths):
    """`compare engine` runs (one JSONL file each): per benchmark, the median over runs of
    its per-run median and of its per-run ratios to the floors (raw LMDB read for gets; raw
    put+commit without and with WRITEMAP for sets). Ratios are taken within each run, whose
    benchmarks are interleaved, so the machine's noise cancels out of them."""
    runs = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                runs.setdefault(r["bench"], {}).setdefault(r["stat"], []).append(r["value"])
    med = lambda v: sorted(v)[len(v) // 2] if v else None
    print(f"{len(paths)} runs; medians over runs (per-run µs/op medians listed)")
    print(f"| {'benchmark':<28} | {'µs/op':>8} | {'runs':<24} | {'x floor':>8} | {'x floor, each run':<22} | {'x WRITEMAP floor':>16} |")
    print(f"|{'-' * 30}|{'-' * 9}:|{'-' * 26}|{'-' * 9}:|{'-' * 24}|{'-' * 17}:|")
    for bench, stats in runs.items():
        us = med(stats["median_us"])
        ratio = lambda floor: med(stats.get(f"x_{floor}", []))
        is_get = "get" in bench or "read" in bench
        cells = [ratio("lmdb_raw_get_notls") if is_get else ratio("lmdb_raw_put_commit"),
                 None if is_get else ratio("lmdb_raw_put_commit_writemap")]
        cells = ["" if r is None else f"{r:.2f}x" for r in cells]
        spread = ", ".join(f"{v:.3f}" for v in stats["median_us"])
        # Each run's own ratio: "done" for a ratio goal is judged on one run's medians.
        floor = "x_lmdb_raw_get_notls" if is_get else "x_lmdb_raw_put_commit"
        each = ", ".join(f"{v:.2f}" for v in stats.get(floor, []))
        print(f"| {bench:<28} | {us:>8.3f} | {spread:<24} | {cells[0]:>8} | {each:<22} | {cells[1]:>16} |")


def main():
    args = sys.argv[1:]
    if args[:1] == ["gol-child"]:
        gol_child(args[1])
    elif args[:1] == ["core-child"]:
        core_child(args[1], int(args[2]))
    elif args[:1] == ["table"]:
        table(args[1:])
    elif args[:1] == ["engine-table"]:
        engine_table(args[1:])
    else:
        headline()
        for procs in (1, 2, 4, 8):
            core(procs)


if __name__ == "__main__":
    main()
