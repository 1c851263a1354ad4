from bertflow.cli import app

app()
