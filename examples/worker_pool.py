"""A pool of workers sharing one topic's jobs through a DPMQ consumer group, with ack.

Each worker is a thread with its own connection and consumerId in the group "workers": every job
goes to exactly one of them, and a job is acked only once its worker has done it, so a worker that
dies mid-job has the job redelivered to another.

    python examples/worker_pool.py --url http://127.0.0.1:8080 --topic jobs --workers 4
    dpmq publish jobs 'resize photo 17'          # in another terminal
"""

import argparse
import threading

from dpmq.client import Consumer

PRINT = threading.Lock()        # workers share stdout: one line at a time


def work(worker, message):
    """The job itself; here it only reports what it got."""
    with PRINT:
        print(f"{worker}: {message.data} (attempt {message.status + 1})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--topic", default="jobs")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=0, help="stop after this many jobs in all (0 = never)")
    args = parser.parse_args()

    done = threading.Semaphore(0)
    consumers = [Consumer(args.url, args.topic, f"worker-{n}", group="workers", ack=True)
                 for n in range(args.workers)]

    def run(consumer):
        def handle(message):
            work(consumer.consumer_id, message)
            done.release()
        consumer.run(handle)            # acks each job after handle() returns

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    try:
        for _ in range(args.jobs) if args.jobs else iter(int, 1):
            done.acquire()
    except KeyboardInterrupt:
        pass
    for consumer in consumers:
        consumer.close()
    for thread in threads:
        thread.join(5)


if __name__ == "__main__":
    main()
