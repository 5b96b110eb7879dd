"""Running a step inside a Snakemake job: log to the rule's log file, turn known errors into a clear exit."""

import logging
import sys
import time

from . import SegbenchError


def run_step(snakemake, step):
    """Call `step(snakemake)`, logging to the job's log; a SegbenchError ends the job with its message."""
    handlers = [logging.FileHandler(snakemake.log[0], mode="w")] if snakemake.log else []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=handlers or [logging.StreamHandler(sys.stderr)], force=True)
    log = logging.getLogger("segbench")
    start = time.perf_counter()
    try:
        step(snakemake)
    except SegbenchError as error:
        log.error("%s", error)
        print(f"segbench error in rule {snakemake.rule}: {error}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        log.exception("unexpected failure in rule %s", snakemake.rule)
        raise
    log.info("done in %.2f s", time.perf_counter() - start)
