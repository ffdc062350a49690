"""`ensdist-path`: print the directory to pass as fairseq's --user-dir."""

import os


def plugin_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("ensdist_fairseq")
    return os.path.dirname(os.path.abspath(spec.origin))


def main() -> None:
    print(plugin_dir())


if __name__ == "__main__":
    main()
