"""Workflows that chain the pipeline steps and write a run folder with a report.

========================  ==========================================================
module                    workflow
========================  ==========================================================
:mod:`.crossscan`         ``stem2eds experiment``: train, predict unseen scans, score
:mod:`.sparse`            ``--strategy sparse``: sparse EDS, uncertainty, anomalies
:mod:`.demo`              ``stem2eds demo``: simulate a series and run the experiments
========================  ==========================================================
"""
