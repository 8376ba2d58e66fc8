"""Run the imgsearch command from a checkout: ``python cli.py --help`` is ``imgsearch --help``."""

from imgsearch.cli import run

if __name__ == "__main__":
    run()
