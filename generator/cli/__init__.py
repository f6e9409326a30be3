"""The `medport` command line: the command group (`main.py`, which loads each subsystem's command on use) and
the generator of the README's command and config references (`docs.py`)."""
