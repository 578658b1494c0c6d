"""The shipped `accelerate` configs (`recipes/accelerate/`): each loads, means what its comments say, and launches."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

CONFIGS = ROOT / "recipes" / "accelerate"
EXPECTED = {"multi-gpu.yaml", "multi-node.yaml", "fsdp.yaml", "deepspeed-zero2.yaml"}


def _resolve(path: Path, *flags: str):
    """What `accelerate launch --config_file path [flags] -m hf_transfer train r.yaml` decides, without launching."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), *flags, "-m", "hf_transfer", "train", "r"])
    args, _, _ = _validate_launch_command(args)
    return args


def test_every_config_is_shipped_and_bundled_recipe_listings_skip_them():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == EXPECTED
    assert not {p.name for p in (ROOT / "recipes").glob("*.yaml")} & EXPECTED  # `recipes/*.yaml` are recipes only


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_opens_with_its_launch_command_and_loads_in_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = CONFIGS / name
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Launch")
    assert re.search(
        rf"^#\s+accelerate launch --config_file recipes/accelerate/{name} .*-m hf_transfer train ", text, re.M
    )
    tree = yaml.safe_load(text)
    unknown = set(tree) - set(ClusterConfig.__dataclass_fields__)
    assert not unknown, unknown
    config = load_config_from_file(str(path))  # accelerate's own loader: unknown keys and bad enum values fail here
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment.value == "LOCAL_MACHINE" and config.num_processes >= 2


@pytest.mark.parametrize("name", ["fsdp.yaml", "deepspeed-zero2.yaml"])
def test_plugin_sections_use_only_keys_the_launcher_reads(name):
    """accelerate copies fsdp_config / deepspeed_config entries onto its launch arguments by name; a misspelt key is
    silently ignored, so each must be one of those arguments."""
    from accelerate.commands.launch import launch_command_parser

    destinations = {action.dest for action in launch_command_parser()._actions}
    tree = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
    section = tree["fsdp_config"] if "fsdp_config" in tree else tree["deepspeed_config"]
    keys = {key if key.startswith("fsdp") or "deepspeed_config" in tree else f"fsdp_{key}" for key in section}
    assert keys <= destinations, keys - destinations


def test_multi_gpu_config_launches_ddp_over_every_local_gpu():
    args = _resolve(CONFIGS / "multi-gpu.yaml")
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (True, False, False)
    assert (args.num_processes, args.num_machines, args.gpu_ids, args.mixed_precision) == (2, 1, "all", "bf16")
    assert _resolve(CONFIGS / "multi-gpu.yaml", "--num_processes", "8").num_processes == 8  # flags win


def test_multi_node_config_splits_processes_over_machines_and_names_the_main_one():
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = _resolve(CONFIGS / "multi-node.yaml", "--machine_rank", "1")
    prepare_multi_gpu_env(args)  # fills in what torchrun receives
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert args.rdzv_endpoint == "main-node.example:29500"
    text = (CONFIGS / "multi-node.yaml").read_text(encoding="utf-8")
    assert "PLACEHOLDER" in text and "--machine_rank 0" in text and "--machine_rank 1" in text
    assert "filesystem every machine mounts" in text  # checkpoints hold one RNG-state file per process


def test_fsdp_config_full_shard_wrapping_bert_layers(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import ShardingStrategy, StateDictType
    from transformers.models.bert import modeling_bert

    args = _resolve(CONFIGS / "fsdp.yaml")
    assert args.use_fsdp and not args.multi_gpu
    env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith("FSDP_") or key == "ACCELERATE_USE_FSDP":
            monkeypatch.setenv(key, value)
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # building the plugin with it asks for a GPU device
    plugin = FullyShardedDataParallelPlugin()  # the plugin the training process builds from that environment
    assert plugin.fsdp_version == 1 and plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert plugin.transformer_cls_names_to_wrap == ["BertLayer"] and hasattr(modeling_bert, "BertLayer")
    assert plugin.use_orig_params and not plugin.cpu_ram_efficient_loading


def test_deepspeed_config_is_zero2_clipping_like_the_recipe_default():
    from hf_transfer.recipe import TrainingConfig

    args = _resolve(CONFIGS / "deepspeed-zero2.yaml")
    assert args.use_deepspeed and args.zero_stage == 2
    assert float(args.gradient_clipping) == TrainingConfig().max_grad_norm
    assert (args.offload_optimizer_device, args.offload_param_device) == ("none", "none")
    # Left to the recipe: a value here would override training.grad_accum through the environment.
    assert args.gradient_accumulation_steps is None
