#!/usr/bin/env python3
"""A cache hit of `concurio run` beside bkt's, in one run (issue 11, point 6).

Both tools cache the same command (`echo hello`) with a TTL of an hour, primed once; then
each hit runs as a fresh process, alternating tools, ROUNDS times. Prints the median wall
time and the median peak RSS (from wait4's rusage) per hit, and the ratios.

    bench/bkt_vs_concurio.sh   # builds concurio, installs bkt with cargo, runs this
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("ROUNDS", "200"))


def run(argv, env):
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, _, rusage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    assert out == b"hello\n", (argv, out)
    return elapsed, rusage.ru_maxrss  # kB on Linux


def main():
    concurio, bkt = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env["DBX_CONCURIO_CACHE_DIR"] = os.path.join(tmp, "concurio")
        env["CONCURIO_CACHE_DIR"] = os.path.join(tmp, "concurio")
        env["BKT_CACHE_DIR"] = os.path.join(tmp, "bkt")
        os.makedirs(env["BKT_CACHE_DIR"])
        tools = {
            "concurio": [concurio, "run", "--ttl", "1h", "--", "echo", "hello"],
            "bkt": [bkt, "--ttl", "1h", "--", "echo", "hello"],
        }
        for argv in tools.values():  # prime
            run(argv, env)
        samples = {name: [] for name in tools}
        for _ in range(ROUNDS):
            for name, argv in tools.items():
                samples[name].append(run(argv, env))
        med = {
            name: (
                statistics.median(s[0] for s in v) * 1e3,
                statistics.median(s[1] for s in v) / 1024,
            )
            for name, v in samples.items()
        }
        print(f"{ROUNDS} hits each, alternating, one run")
        print(f"{'tool':<10} {'median ms':>10} {'median max RSS MB':>18}")
        for name, (ms, mb) in med.items():
            print(f"{name:<10} {ms:>10.2f} {mb:>18.1f}")
        print(
            f"concurio / bkt: time {med['concurio'][0] / med['bkt'][0]:.2f}x, "
            f"RSS {med['concurio'][1] / med['bkt'][1]:.2f}x"
        )


if __name__ == "__main__":
    main()
