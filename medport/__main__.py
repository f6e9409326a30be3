"""`python -m medport`: the `medport` command."""

from medport.generator.cli.main import main

if __name__ == "__main__":
    main(prog_name="medport")
