"""``python -m dist_unlearn`` is the same CLI as ``dist-unlearn``."""

from dist_unlearn.cli import main

if __name__ == "__main__":
    main()
