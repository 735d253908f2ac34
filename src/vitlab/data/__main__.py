"""Look at a data source from the command line: the same as `vitlab data`.

    python -m vitlab.data fashion_mnist --split 'train[98%:]'
    python -m vitlab.data folder:/data/pets --split train --scan     # decode everything, list bad files
"""
import sys

from ..cli import main as vitlab_main


def main(argv=None) -> int:
    return vitlab_main(["data", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
