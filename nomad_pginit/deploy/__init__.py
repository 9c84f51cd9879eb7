"""Deploying the job to Nomad: what ``nomad-pginit deploy`` and ``publish`` do.

- ``following``: poll the evaluation, the new allocation and the init task, with a deadline.
- ``oneshot``: register the job and follow the run of its init task (``--rerun``).
- ``live``: register only a changed job, publish the services, wait for the sidecar's pass.
- ``publication``: write the services file into the job's Nomad variable (check-and-set).
"""
