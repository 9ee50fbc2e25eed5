"""The app: two tabs (Ask, Runs) in one Gradio `Blocks`, and `serve`, which runs it until interrupted.

    settings = AppSettings(model_dir=Path("runs/demo/grpo/final"), config=..., runs_dir=Path("runs/demo"))
    blocks, cleanup = build_app(settings)   # blocks.launch(...) serves it; cleanup() removes the temp files
    serve(settings)                         # build, launch on settings.host:settings.port, block, clean up

The example images (the demo world's test split) are written to a temporary directory that `cleanup` removes.
Defaults (`demo_defaults`): when `runs/demo` (the demo's output) exists, its GRPO model, its resolved
config (search indexes, prompt set, token limits, reward) and its directory for the Runs tab.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.config import Config

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEMO_DIR = Path("runs/demo")


@dataclass
class AppSettings:
    model_dir: Path | None = None
    config: Config = field(default_factory=Config)
    runs_dir: Path | None = None
    world_dir: Path | None = None  # example images come from its test split
    tools: bool = True
    host: str = "127.0.0.1"
    port: int = 7860


def demo_defaults(demo_dir: Path = DEMO_DIR) -> dict[str, Path]:
    """The demo's model, config, world and run directory, those that exist."""
    out: dict[str, Path] = {}
    if not demo_dir.is_dir():
        return out
    out["runs_dir"] = demo_dir
    if (demo_dir / "grpo" / "final").is_dir():
        out["model_dir"] = demo_dir / "grpo" / "final"
    if (demo_dir / "grpo" / "config.yaml").is_file():
        out["config"] = demo_dir / "grpo" / "config.yaml"
    if (demo_dir / "world" / "data" / "test.parquet").is_file():
        out["world_dir"] = demo_dir / "world"
    return out


def build_app(settings: AppSettings) -> tuple[Any, Callable[[], None]]:
    """The Gradio Blocks of the app and the function that removes its temporary files."""
    import gradio as gr

    from mmsearch_r1.app.agent import Agent, AgentSetup
    from mmsearch_r1.app.ask_tab import build_ask_tab, write_examples
    from mmsearch_r1.app.runs_tab import build_runs_tab
    from mmsearch_r1.app.view import CSS

    temp_root = Path(tempfile.mkdtemp(prefix="mmsearch_r1_app_"))

    def cleanup() -> None:
        shutil.rmtree(temp_root, ignore_errors=True)

    try:
        agent = None
        if settings.model_dir is not None:
            agent = Agent(AgentSetup(settings.model_dir, settings.config, tools=settings.tools))
        examples = write_examples(settings.world_dir, temp_root / "examples") if settings.world_dir else []
        with gr.Blocks(title="mmsearch-r1", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
            gr.Markdown("# mmsearch-r1: ask with an image, watch the search; browse a run's trajectories")
            with gr.Tab("Ask", elem_id="tab-ask"):
                build_ask_tab(gr, agent, examples)
            with gr.Tab("Runs", elem_id="tab-runs"):
                build_runs_tab(gr, blocks, str(settings.runs_dir) if settings.runs_dir else "")
        blocks.mm_css = CSS  # passed to launch (Gradio 6 takes css there)
        blocks.mm_allowed = [str(temp_root)]
    except Exception:
        cleanup()
        raise
    return blocks, cleanup


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; a warning for another one when allowed; ValueError when not allowed."""
    if host in LOOPBACK:
        return None
    if not allow_remote:
        raise ValueError(
            f"--host {host}: not a loopback address; the app has no authentication, so serving it to other "
            "machines needs --allow-remote"
        )
    return (
        f"warning: serving on {host}, reachable from other machines; the app has no authentication: anyone "
        "who reaches it can run the model and read the run directories it can see"
    )


def launch(blocks: Any, settings: AppSettings, *, block: bool = True) -> Any:
    """Start serving (`block=False` returns at once, for tests)."""
    return blocks.launch(
        server_name=settings.host,
        server_port=settings.port,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=True,
        css=getattr(blocks, "mm_css", None),
        allowed_paths=getattr(blocks, "mm_allowed", None),
        share=False,
        ssr_mode=False,
    )


def serve(settings: AppSettings) -> None:
    """Build and serve until interrupted (Ctrl-C or SIGTERM); the temporary files are removed either way."""
    import signal

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    blocks, cleanup = build_app(settings)
    try:
        launch(blocks, settings, block=False)
        old = signal.signal(signal.SIGTERM, on_term)  # after launch, which installs its own handlers
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, old)
    finally:
        blocks.close()
        cleanup()
