"""One contender of the S3 lock race (tests/storage/test_s3.py), run in a spawned process.

Each round every contender builds a RunLock (probing the server), waits for the others,
tries to acquire, and reports; the winner releases only once every contender has tried.
"""

import sys


def contend(uri, rounds, barrier, results, without_boto3=False):
    if without_boto3:
        sys.modules["boto3"] = None  # import boto3 now raises ImportError: the fallback protocol
    from delift_ray.lock import LockError, RunLock
    from delift_ray.storage import resolve_fs

    fs, path = resolve_fs(uri)
    for r in range(rounds):
        lock = RunLock(fs, path, uri)
        barrier.wait()
        try:
            lock.acquire()
            won = True
        except LockError:
            won = False
        barrier.wait()  # every contender has tried before the winner lets go
        if won:
            lock.release()
        results.put((r, won, lock.protocol))
        barrier.wait()  # released before the next round
