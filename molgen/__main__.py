from molgen.cli import app

app(prog_name="molgen")
