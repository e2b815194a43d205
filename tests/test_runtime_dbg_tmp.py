import io, shutil, time, sys
from test_runtime_support import *
from pm.journal import iter_journal

def test_dbg(topics):
    config = topics
    fast, slow, cancelled = "<fast@x>", "<slow@x>", "<cancelled@x>"
    with PmThread(config):
        publish(config, [email(fast, "fast-timer"), email(slow, "slow-timer"), email(cancelled, "fast-timer")])
        wait_stage(config, [cancelled], "classifying", timeout=0.9)  # before its 1 s timer is due
        publish(config, [classified(cancelled)])
        time.sleep(2)
    for r in iter_journal(config):
        print(r.partition, r.offset, r.event.correlation_id, r.event.type, r.event.occurred_at, r.entry.payload.outcome, r.entry.payload.reason, r.entry.payload.status, file=sys.stderr)
