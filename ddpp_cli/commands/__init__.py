"""One module per ``ddpp`` command: its options, its display and its engine call.

Options shared by several commands are declared once in :mod:`._options`; display helpers
shared by several commands live in :mod:`._display`. ``ddpp_cli.cli`` registers the commands.
"""
