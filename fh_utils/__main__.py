from fh_utils.cli import main

main(prog_name="fh_utils")
