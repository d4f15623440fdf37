from taskhost import App, task


@task
def notify_started(app: App, delay_ms: int = 1000) -> None:
    """Greets after `delay_ms`, with the greeting from [config]."""
    app.sleep(delay_ms)  # raises taskhost.Cancelled if the task is cancelled
    greeting = app.config("greeting", "hello")
    app.info(f"{greeting} from {app.name()} on worker {app.worker()}")


@task
def add(app: App, a: int, b: int) -> int:
    """Adds two numbers; the sum becomes the task's result."""
    app.debug("adding")
    return a + b
