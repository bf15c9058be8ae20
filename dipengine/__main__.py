from dipengine.cli import run

run()
