"""Child process for test_kill9_recovery: 32 threads write in `sync` mode and print each ack.

Each thread cycles over its own 40 keys writing values `<thread>:<counter>`; a line
`<thread> <key> <counter>` is printed only after `put` returned, so every line the parent reads
is an acknowledged write.
"""

from __future__ import annotations

import json
import sys
import threading

from limedb.storage import Engine, EngineOptions


def main() -> None:
    path, start, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    engine = Engine.open(path, EngineOptions(**options))
    out_lock = threading.Lock()
    out = sys.stdout

    def writer(t: int) -> None:
        counter = start
        while True:
            counter += 1
            key = b"t%02d-k%02d" % (t, counter % 40)
            engine.put(key, b"%d:%d:" % (t, counter) + b"x" * 64)
            with out_lock:
                out.write(f"{t} {key.decode()} {counter}\n")
                out.flush()

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(32)]
    with out_lock:
        out.write("ready\n")
        out.flush()
    for th in threads:
        th.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
