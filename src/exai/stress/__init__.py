"""`exai stress`: the production-readiness scenarios (load, recovery, failover, storage, faults, security, soak).

Every scenario runs against a target (processes started here, or an existing deployment), measures, and checks
its pass criteria; the runner shows live progress and writes a JSON, a terminal and an HTML report.
"""
