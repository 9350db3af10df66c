#!/usr/bin/env python3
"""soak.py: load and soak runs of sepd on the CPU (a benchmark, not a test).

  bench/soak.py load [--sessions 64] [--seconds 600]
      SESSIONS clients feed their own sessions at once for SECONDS, each
      piece 1-4 KB of the bundled book from a random offset; between
      pieces a client may suspend and resume its session (6%) or close
      it and open it again (4%). Reports tokens/s, the p50/p99 latency of
      a piece (one `sepctl feed`, from its start to its answer), the
      errors (any sepctl that fails, or a session whose committed bytes
      differ from the bytes fed), and sepd's and the workers' RSS sampled
      every few seconds.
  bench/soak.py long [--tokens 10000000]
      One session fed the book over and over until TOKENS are scored,
      checkpoints on; RSS, the store's size and tokens/s sampled.

Run from a built tree. Writes OUT/samples.dat (time, tokens, tokens/s,
sepd RSS KiB, worker RSS KiB, store bytes, archive bytes), OUT/summary.json
and, with gnuplot, OUT/soak-MODE.png (OUT: --out, default bench-out/soak-MODE).
SIGINT ends a run early and still writes what it has. Options after `--`
go to sepd (say `-- --threads 1`); --open-args go to every `sepctl open`.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEPCTL = os.path.join(ROOT, "ctl", "sepctl")
SEPD = os.path.join(ROOT, "daemon", "sepd")
BOOK = os.path.join(ROOT, "books", "persuasion.txt")

stop = threading.Event()


def sepctl(env, *args, stdin=None):
    """Run sepctl; (rc, stdout, stderr)."""
    p = subprocess.run([SEPCTL, *args], input=stdin, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Run:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="sepd-soak-")
        self.env = dict(os.environ, SEPD_SOCKET=f"ipc://{self.work}/sepd.sock")
        self.samples = []      # (t, tokens, tokens/s, sepd KiB, worker KiB, store, archive)
        self.latencies = []    # seconds, one per piece
        self.errors = []       # strings
        self.lock = threading.Lock()
        self.log = open(os.path.join(self.work, "sepd.log"), "w")
        self.sepd = subprocess.Popen([SEPD, "--foreground", "--store",
                                      os.path.join(self.work, "store"), *args.sepd_args],
                                     env=self.env, stderr=self.log)
        deadline = time.time() + 60
        while sepctl(self.env, "ls")[0] != 0:
            if time.time() > deadline or self.sepd.poll() is not None:
                raise SystemExit("soak: sepd did not start; see " + self.log.name)
            time.sleep(0.1)
        self.t0 = time.time()

    def error(self, what):
        with self.lock:
            self.errors.append(what)

    def sample(self):
        rc, out, err = sepctl(self.env, "stats", "--json")
        if rc != 0:
            self.error("stats: " + err.strip())
            return
        st = json.loads(out)
        wk = sum(w.get("rss_kib", 0) for w in st.get("workers", []))
        store = st.get("store", {})
        t = time.time() - self.t0
        tok = st.get("tokens", 0)
        rate = 0.0
        if self.samples:
            pt, ptok = self.samples[-1][0], self.samples[-1][1]
            rate = (tok - ptok) / (t - pt) if t > pt else 0.0
        self.samples.append((t, tok, rate, rss_kib(self.sepd.pid), wk,
                             store.get("file_bytes", 0), store.get("archive_bytes", 0)))

    def sampler(self, period):
        while not stop.wait(period):
            self.sample()

    def finish(self, mode, extra):
        self.sample()
        self.sepd.send_signal(signal.SIGTERM)
        try:
            self.sepd.wait(120)
        except subprocess.TimeoutExpired:
            self.sepd.kill()
            self.error("sepd did not exit within 120 s of SIGTERM")
        out = self.args.out or os.path.join(ROOT, "bench-out", "soak-" + mode)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "samples.dat"), "w") as f:
            f.write("# seconds tokens tokens_per_s sepd_rss_kib worker_rss_kib store_bytes archive_bytes\n")
            for s in self.samples:
                f.write("%.3f %d %.1f %d %d %d %d\n" % s)
        lat = sorted(self.latencies)
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
        first = self.samples[min(len(self.samples) - 1, 2)] if self.samples else None
        last = self.samples[-1] if self.samples else None
        summary = {
            "mode": mode,
            "seconds": last[0] if last else 0,
            "tokens": last[1] if last else 0,
            "tokens_per_s": (last[1] / last[0]) if last and last[0] > 0 else 0,
            "pieces": len(lat),
            "latency_p50_s": pct(0.50),
            "latency_p99_s": pct(0.99),
            "latency_max_s": lat[-1] if lat else None,
            "errors": len(self.errors),
            "error_list": self.errors[:20],
            "sepd_rss_kib": {"early": first[3], "last": last[3],
                             "max": max(s[3] for s in self.samples)} if last else None,
            "worker_rss_kib": {"early": first[4], "last": last[4],
                               "max": max(s[4] for s in self.samples)} if last else None,
            "store_bytes": {"early": first[5], "last": last[5],
                            "max": max(s[5] for s in self.samples)} if last else None,
            "machine": "%d cores, %s" % (os.cpu_count(), cpu_model()),
            "sepd_args": self.args.sepd_args,
            "open_args": self.args.open_args,
        }
        summary.update(extra)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        plot(out, mode)
        print(json.dumps(summary, indent=1))
        shutil.rmtree(self.work, ignore_errors=True)
        return 1 if self.errors else 0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def plot(out, mode):
    if shutil.which("gnuplot") is None:
        print("soak: no gnuplot, no plot", file=sys.stderr)
        return
    script = f"""
set terminal pngcairo size 1100,420 font ",10"
set output "{out}/soak-{mode}.png"
set multiplot layout 1,2 title "sepd soak ({mode}), books-llama-16m on the CPU"
set xlabel "seconds"
set ylabel "RSS (MiB)"
set yrange [0:*]
set key bottom right
plot "{out}/samples.dat" using 1:($4/1024) with lines title "sepd", \\
     "" using 1:($5/1024) with lines title "workers", \\
     "" using 1:($6/1048576) with lines title "store file (MiB)"
set ylabel "tokens/s"
plot "{out}/samples.dat" using 1:3 with lines title "tokens/s (between samples)"
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=False)


def load(args):
    book = open(BOOK, "rb").read()
    run = Run(args)
    deadline = run.t0 + args.seconds
    lifetimes = [0]

    def client(i):
        rng = random.Random(i)
        name = "s%d" % i
        fed = 0

        def reopen():
            rc, _, err = sepctl(run.env, "open", name, *args.open_args)
            if rc != 0:
                run.error(f"open {name}: {err.strip()}")
            return rc == 0

        def close():
            rc, out, err = sepctl(run.env, "info", name, "--json")
            if rc != 0:
                run.error(f"info {name}: {err.strip()}")
            elif json.loads(out)["bytes_committed"] != fed:
                run.error(f"{name}: {json.loads(out)['bytes_committed']} bytes committed of {fed} fed")
            rc, _, err = sepctl(run.env, "close", name)
            if rc != 0:
                run.error(f"close {name}: {err.strip()}")
            with run.lock:
                lifetimes[0] += 1

        if not reopen():
            return
        while time.time() < deadline and not stop.is_set():
            r = rng.random()
            if r < 0.06:
                for verb in ("suspend", "resume"):
                    rc, _, err = sepctl(run.env, verb, name)
                    if rc != 0:
                        run.error(f"{verb} {name}: {err.strip()}")
                continue
            if r < 0.10:
                close()
                fed = 0
                if not reopen():
                    return
                continue
            n = rng.randint(1024, 4096)
            at = rng.randrange(0, len(book) - n)
            piece = book[at:at + n]
            # start a piece on a UTF-8 boundary: the book is ASCII but be sure
            while piece and (piece[0] & 0xC0) == 0x80:
                piece = piece[1:]
            t = time.time()
            rc, _, err = sepctl(run.env, "feed", name, stdin=piece)
            dt = time.time() - t
            if rc != 0:
                run.error(f"feed {name}: {err.strip()}")
                continue
            fed += len(piece)
            with run.lock:
                run.latencies.append(dt)
        close()

    sam = threading.Thread(target=run.sampler, args=(args.period,), daemon=True)
    sam.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    return run.finish("load", {"sessions": args.sessions, "lifetimes": lifetimes[0]})


def long(args):
    book = open(BOOK, "rb").read()
    run = Run(args)
    rc, _, err = sepctl(run.env, "open", "soak", *args.open_args)
    if rc != 0:
        raise SystemExit("soak: open: " + err)
    feed = subprocess.Popen([SEPCTL, "feed", "soak"], stdin=subprocess.PIPE, env=run.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fed = [0]

    def writer():
        try:
            while not stop.is_set():
                for at in range(0, len(book), 65536):
                    if stop.is_set():
                        break
                    feed.stdin.write(book[at:at + 65536])
                    fed[0] += len(book[at:at + 65536])
        except BrokenPipeError:
            run.error("feed: sepctl ended early")
        finally:
            try:
                feed.stdin.close()
            except BrokenPipeError:
                pass

    wt = threading.Thread(target=writer, daemon=True)
    wt.start()
    while not stop.is_set():
        time.sleep(args.period)
        run.sample()
        if run.samples and run.samples[-1][1] >= args.tokens:
            break
    stop.set()
    wt.join()
    if feed.wait() != 0:
        run.error("feed: " + feed.stderr.read().decode(errors="replace").strip())
    rc, out, err = sepctl(run.env, "info", "soak", "--json")
    info = json.loads(out) if rc == 0 else {}
    if rc != 0:
        run.error("info: " + err.strip())
    elif info["bytes_committed"] != fed[0]:
        run.error(f"{info['bytes_committed']} bytes committed of {fed[0]} fed")
    return run.finish("long", {"target_tokens": args.tokens, "bytes_fed": fed[0],
                               "session": info})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["load", "long"])
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--period", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--out")
    ap.add_argument("--open-args", default="", help="options for every sepctl open")
    ap.add_argument("sepd_args", nargs="*", help="after --: options for sepd")
    args = ap.parse_args()
    args.open_args = args.open_args.split()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sys.exit(load(args) if args.mode == "load" else long(args))


if __name__ == "__main__":
    main()
