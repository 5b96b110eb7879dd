"""Running a step inside a Snakemake job: log to the rule's log file, turn known errors into a clear exit."""

import logging
import sys
import time

from . import SegbenchError
from .files import disk_full_message, is_disk_full


class _JobLogHandler(logging.FileHandler):
    """The job's log file; on a full disk a line that cannot be written is dropped without the
    traceback that logging would print for it (the job's own message says what happened)."""

    def handleError(self, record):
        if is_disk_full(sys.exc_info()[1]):
            return
        super().handleError(record)


def _disk_full_exit(snakemake, path):
    print(f"segbench error in rule {snakemake.rule}: {disk_full_message(path)}", file=sys.stderr)
    sys.exit(1)


def run_step(snakemake, step):
    """Call `step(snakemake)`, logging to the job's log; a SegbenchError ends the job with its message,
    and so does a full disk (no space left for a file of the job)."""
    try:
        handlers = [_JobLogHandler(snakemake.log[0], mode="w")] if snakemake.log else []
    except OSError as error:
        if not is_disk_full(error):
            raise
        _disk_full_exit(snakemake, snakemake.log[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=handlers or [logging.StreamHandler(sys.stderr)], force=True)
    log = logging.getLogger("segbench")
    start = time.perf_counter()
    log.info("started rule %s", snakemake.rule)  # with "done in" below: when the job ran, to the ms
    try:
        step(snakemake)
    except SegbenchError as error:
        log.error("%s", error)
        print(f"segbench error in rule {snakemake.rule}: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if not is_disk_full(error):
            log.exception("unexpected failure in rule %s", snakemake.rule)
            raise
        # Not written through files.atomic_path (which names its file): the error's file, if it
        # has one, else the job's outputs.
        path = error.filename or ", ".join(map(str, snakemake.output))
        log.error("%s", disk_full_message(path))
        _disk_full_exit(snakemake, path)
    except Exception:
        log.exception("unexpected failure in rule %s", snakemake.rule)
        raise
    log.info("done in %.2f s", time.perf_counter() - start)
