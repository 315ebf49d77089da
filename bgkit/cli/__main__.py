"""``python -m bgkit.cli ...``: the ``bgkit`` command."""
from bgkit.cli import main

if __name__ == "__main__":
    main()
