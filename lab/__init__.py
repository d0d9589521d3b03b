"""The lab: the studies behind the product's defaults, apart from the pipeline's code (stages/).

    lab/README.md              one row per study: question, answer, command, where its runs live
    lab/<study>/README.md      the study's table and a few lines, generated
    lab/<study>/results.csv    the same table, one row per run (or model, or variant)
    lab/<study>/runs.tar.xz    every run snapshot of the study (lab.archive)

    python -m lab.tables [STUDY ...]     regenerate README.md and results.csv from the archives (lab.tables)
    python -m lab.collect STUDY EXP ...  pack finished experiments into a study's archive (lab.collect)

The studies' questions and answers are written in lab/studies.py; every number comes from an archive.
"""
