"""The process manager runtime: consume inputs, decide, journal, emit, all in one transaction per batch.

Commit order of one batch (`ProcessManager.run_once`, driving a `checkpoint.Checkpoint`),
modelled on Quix Streams' checkpoint:

1. `begin_transaction`; for each input record: decode, check that it is keyed by
   its correlation ID on that key's partition (`pm.integrity`; bad -> `pm.dlq`), drop
   duplicates (event ID already applied to that process), decide, produce the
   journal entry, the commands and the published events. Due timers produce
   their `TimerFired` in the same transaction.
2. `flush`: every record of the transaction is delivered; the delivery reports
   tell the journal offsets the store will record.
3. `send_offsets_to_transaction`: the input offsets join the transaction.
4. `commit_transaction`: journal, commands, DLQ records and input offsets
   become visible together (exactly-once on Kafka).
5. Only now the store: one RocksDB WriteBatch per partition store (states,
   timer index, journal offset). A crash between 4 and 5 leaves the store
   behind the journal; the catch-up on the next assignment folds the missing
   entries, so nothing is lost, and the committed input offsets mean nothing
   is decided twice.

On an abortable error the transaction is aborted, the consumer rewound to the
batch's first offsets and the batch's in-memory changes dropped (the cache and
stores are only touched in step 5); the records are simply consumed again.
On a broker that shows aborted records to read_committed readers, their
journal entries carry the same derived event IDs as the retry, and folding
skips inputs already applied, so the result is the same.

Modules (each imports only those above it):

- `state`: in-memory state kept between batches (process cache, catch-up outputs, retry
  times) and `stage_change`, the store diff of one process change.
- `backpressure`: pause the topics that open new processes above `max_active`.
- `checkpoint`: `Batch` (what one transaction changes) and `Checkpoint` (its commit steps).
- `recovery`: `PartitionRecovery`, the catch-up of one partition's store on assignment.
- `inputs`: `InputHandler`, one input record from decode to produced outputs.
- `manager`: `ProcessManager`: the loop, assignment, and the wiring of the above.
- `run`: `run_process_manager`, one instance in the foreground until stopped.
"""

from __future__ import annotations

from pm.runtime.checkpoint import FencedError
from pm.runtime.manager import ProcessManager, RuntimeStats
from pm.runtime.run import run_process_manager
from pm.runtime.state import stage_change

__all__ = [
    "ProcessManager",
    "RuntimeStats",
    "FencedError",
    "run_process_manager",
    "stage_change",
]
