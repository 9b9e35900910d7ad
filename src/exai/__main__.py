from exai.cli import app

app()
