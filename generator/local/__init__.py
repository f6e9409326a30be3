"""The local stack: the Medplum emulator and the fake Metriport started together with the bots deployed
(`stack.py`), the commands that run it (emulate, demo, check, status), the scenarios `medport check` runs, and
the environment checks and set-up (doctor, setup)."""
