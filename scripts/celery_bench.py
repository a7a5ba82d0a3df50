"""The seed backend's way to run jobs, for `rdm bench jobs`: Celery with
Redis as broker and result backend. Starts WORKERS Celery worker processes
(prefork, CONCURRENCY each), sends N no-op tasks, and waits until every
result is in Redis. Prints one line: `celery: N jobs in S s`.

Usage: celery_bench.py N WORKERS CONCURRENCY (CELERY_BENCH_REDIS: the Redis URL,
default redis://127.0.0.1:6379/15)
"""
import os
import subprocess
import sys
import time

from celery import Celery

REDIS = os.environ.get("CELERY_BENCH_REDIS", "redis://127.0.0.1:6379/15")
app = Celery("celery_bench", broker=REDIS, backend=REDIS)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=16, broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop(i):
    return i


def main():
    n, workers, concurrency = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    app.backend.client.flushdb()
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--loglevel", "WARNING", "-n", f"w{i}@bench",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(workers)
    ]
    try:
        deadline = time.time() + 60
        while len(app.control.ping(timeout=0.5) or []) < workers:
            if time.time() > deadline:
                sys.exit("the Celery workers did not start")
        # Warm-up, as rdm's side has one.
        [r.get(timeout=60) for r in [noop.delay(i) for i in range(n // 10)]]
        start = time.time()
        results = [noop.delay(i) for i in range(n)]
        for r in results:
            r.get(timeout=600)
        elapsed = time.time() - start
        print(f"celery: {n} jobs in {elapsed:.3f} s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
