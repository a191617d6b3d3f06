"""`python -m fh_utils` and the `fh_utils` command.

`fh_utils status` goes straight to its own small parser: an agent runs it after every save, and
it has no use for click, uvicorn or the reload machinery that `fh_utils.cli` imports. What that
parser does not take (`--help`, a mistake) goes to `fh_utils.cli`, which has the same command.
"""

import sys


def main() -> None:
    if sys.argv[1:2] == ["status"]:
        from fh_utils.status import main as status

        code = status(sys.argv[2:])
        if code is not None:
            sys.exit(code)
    from fh_utils.cli import main as cli

    cli.main(prog_name="fh_utils")


if __name__ == "__main__":
    main()
