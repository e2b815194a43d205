"""An app whose import never returns (a module that waits on a network peer that is gone): a worker loading
it is stuck, not dead."""

import time

time.sleep(3600)
