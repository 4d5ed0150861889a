"""``python -m voltana``: the same entry point as the ``voltana`` console script."""

from voltana.cli.launch import main

if __name__ == "__main__":  # importing this module (e.g. pkgutil.walk_packages) runs nothing
    main()
