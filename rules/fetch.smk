# Downloads and archives named in the config (`downloads:`, `unpack:`); `snakemake fetch` gets
# what the dataset and the runs' models need. Files already there and verified are left alone.

from segbench.download import UNPACKED_MARKER

for _i, (_dest, _spec) in enumerate(config["downloads"].items()):

    rule:
        name:
            f"download_{_i:03d}"
        output:
            _dest,
        params:
            url=_spec["url"],
            checksum=_spec["checksum"],
        localrule: True
        retries: 2
        log:
            f"logs/fetch/download_{_i:03d}.log",
        script:
            "../scripts/download.py"


for _i, (_dest, _spec) in enumerate(config["unpack"].items()):

    rule:
        name:
            f"unpack_{_i:03d}"
        input:
            archive=_spec["archive"],
            add=list(_spec["add"].values()),
        output:
            f"{_dest}/{UNPACKED_MARKER}",
        params:
            dest=_dest,
            strip=_spec["strip"],
            members=_spec["members"],
            add=canonical(_spec["add"]),
        localrule: True
        log:
            f"logs/fetch/unpack_{_i:03d}.log",
        script:
            "../scripts/unpack.py"


rule fetch:
    input:
        FETCH_TARGETS,
    localrule: True
