"""The `peftlab` subcommands that work on your own data (peftlab/cli.py builds the parser).

    options.py  the one-line-error parser, option types, output-folder checks
    runs.py     run folders: OUT.partial while training, OUT when finished, run.json
    methods.py  the methods `peftlab train` applies, with their options and learning rates
    train.py    peftlab train (and --resume)
    use.py      peftlab evaluate, peftlab predict
"""
