"""Factory behaviour (spec 01 §2-6): registry, name forms, errors, precision, preprocess cfg."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from open_clip import config_registry
from open_clip.config_registry import _MODEL_CONFIGS, add_model_config, get_model_config, list_models
from open_clip.constants import OPENAI_DATASET_MEAN
from open_clip.factory import create_model, create_model_and_transforms, create_model_from_pretrained
from open_clip.models.clip import (
    CLIP,
    CustomTextCLIP,
    convert_weights_to_fp16,
    convert_weights_to_lp,
    get_cast_dtype,
    get_input_dtype,
)
from open_clip.models.layers import LayerNorm, LayerNormFp32
from open_clip.models.materialize import UnsupportedMaterialize, check_buffers_supported

TINY_VIT = {
    'embed_dim': 16,
    'vision_cfg': {'image_size': 32, 'patch_size': 8, 'width': 32, 'layers': 2, 'head_width': 16},
    'text_cfg': {'context_length': 12, 'vocab_size': 100, 'width': 32, 'heads': 2, 'layers': 2},
}
TINY_RN = {
    'embed_dim': 16,
    'vision_cfg': {'image_size': 64, 'layers': [1, 1, 1, 1], 'width': 8, 'head_width': 16},
    'text_cfg': {'context_length': 12, 'vocab_size': 100, 'width': 32, 'heads': 2, 'layers': 2},
}


@pytest.fixture
def registry():
    """Snapshot and restore the global registry so tests can register configs freely."""
    configs = dict(_MODEL_CONFIGS)
    paths = list(config_registry._MODEL_CONFIG_PATHS)
    invalid = dict(config_registry._INVALID_CONFIGS)
    _MODEL_CONFIGS['_tiny-vit'] = json.loads(json.dumps(TINY_VIT))
    _MODEL_CONFIGS['_tiny-rn'] = json.loads(json.dumps(TINY_RN))
    yield _MODEL_CONFIGS
    _MODEL_CONFIGS.clear()
    _MODEL_CONFIGS.update(configs)
    config_registry._MODEL_CONFIG_PATHS[:] = paths
    config_registry._INVALID_CONFIGS.clear()
    config_registry._INVALID_CONFIGS.update(invalid)


# ---------------------------------------------------------------- registry


def test_list_models_order():
    models = list_models()
    assert len(models) == 144
    assert models[:3] == ['coca_base', 'coca_roberta-ViT-B-32', 'coca_ViT-B-32']
    assert models[-1] == 'xlm-roberta-large-ViT-H-14'
    rn = [m for m in models if m.startswith('RN') and 'quickgelu' not in m]
    assert rn == ['RN50', 'RN50x4', 'RN50x16', 'RN50x64', 'RN101']
    assert models.index('RN50') < models.index('RN50-quickgelu') < models.index('RN50x4')
    assert models.index('MobileCLIP2-B') < models.index('MobileCLIP-B')
    assert models.index('ViT-B-16-SigLIP2') < models.index('ViT-B-16-SigLIP-256')


def test_add_model_config_folder(registry, tmp_path):
    for name in ('m10', 'm9'):
        (tmp_path / f'{name}.json').write_text(json.dumps(TINY_VIT))
    (tmp_path / 'no_text.json').write_text(json.dumps({'embed_dim': 1, 'vision_cfg': {}}))
    (tmp_path / 'broken.json').write_text('{"embed_dim": 1,')
    with pytest.warns(UserWarning) as record:
        add_model_config(tmp_path)
    messages = ' '.join(str(w.message) for w in record)
    assert 'no_text.json' in messages and 'text_cfg' in messages
    assert 'broken.json' in messages and 'JSON' in messages
    models = list_models()
    assert models.index('m9') < models.index('m10')
    assert 'no_text' not in models and 'broken' not in models
    with pytest.raises(ValueError, match=r"no_text\.json.*text_cfg"):
        get_model_config('no_text')
    with pytest.raises(ValueError, match=r'broken\.json.*not valid JSON'):
        create_model('broken')


def test_user_config_overrides_builtin(registry, tmp_path):
    override = dict(TINY_VIT, embed_dim=24)
    (tmp_path / 'ViT-B-32.json').write_text(json.dumps(override))
    add_model_config(tmp_path / 'ViT-B-32.json')
    assert get_model_config('ViT-B-32')['embed_dim'] == 24
    assert len(list_models()) == 144 + 2  # the two tiny fixtures; the override replaced, not added


def test_get_model_config_is_a_deep_copy():
    cfg = get_model_config('ViT-B-32')
    cfg['vision_cfg']['width'] = 1
    assert get_model_config('ViT-B-32')['vision_cfg']['width'] == 768
    assert get_model_config('ViT-B/32') is None
    assert get_model_config('no-such-model') is None


def test_slash_in_name_is_cleaned_by_create_model(registry):
    registry['_tiny-vit2'] = json.loads(json.dumps(TINY_VIT))
    model = create_model('_tiny/vit2')
    assert type(model) is CLIP


def test_class_choice_from_config(registry):
    assert type(create_model('_tiny-vit')) is CLIP
    assert type(create_model('_tiny-vit', force_custom_text=True)) is CustomTextCLIP
    registry['_tiny-custom'] = dict(json.loads(json.dumps(TINY_VIT)), custom_text=True)
    assert type(create_model('_tiny-custom')) is CustomTextCLIP
    # a multimodal_cfg without custom_text reaches CLIP's constructor (3.3 quirk) -> TypeError
    registry['_tiny-mm'] = dict(json.loads(json.dumps(TINY_VIT)), multimodal_cfg={'width': 32})
    with pytest.raises(TypeError):
        create_model('_tiny-mm')


# ---------------------------------------------------------------- errors


def test_unknown_model_lists_close_names():
    with pytest.raises(RuntimeError, match='not found in built-ins') as info:
        create_model('ViT-B-33')
    assert 'ViT-B-32' in str(info.value)
    assert 'list_models' in str(info.value)


def test_unknown_tag(registry):
    with pytest.raises(RuntimeError, match="Pretrained value 'no_such_tag' is not a known tag or valid file path"):
        create_model('_tiny-vit', pretrained='no_such_tag')


def test_empty_schema_identifiers():
    with pytest.raises(ValueError, match="Empty path specified after 'local-dir:' schema."):
        create_model('local-dir:')
    with pytest.raises(ValueError, match="Empty identifier specified after 'hf-hub:' schema."):
        create_model('hf-hub:')


def test_bad_local_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model(f'local-dir:{tmp_path / "missing"}')
    with pytest.raises(FileNotFoundError, match="config file missing"):
        create_model(f'local-dir:{tmp_path}')
    (tmp_path / 'open_clip_config.json').write_text(json.dumps({'preprocess_cfg': {}}))
    with pytest.raises(ValueError, match="Could not load valid config from specified 'local-dir:"):
        create_model(f'local-dir:{tmp_path}')


def test_local_dir_loads_config_and_weights(tmp_path):
    source = CLIP(**TINY_VIT)
    save_file(source.state_dict(), str(tmp_path / 'open_clip_model.safetensors'))
    config = {'model_cfg': TINY_VIT, 'preprocess_cfg': {'mean': [0.5, 0.5, 0.5], 'extra': 1}}
    (tmp_path / 'open_clip_config.json').write_text(json.dumps(config))
    model = create_model(f'local-dir:{tmp_path}', pretrained='ignored', require_pretrained=True)
    assert torch.equal(model.visual.proj, source.visual.proj)
    assert model.visual.preprocess_cfg['mean'] == [0.5, 0.5, 0.5]
    assert 'extra' not in model.visual.preprocess_cfg


def test_require_pretrained_without_weights(registry):
    with pytest.raises(RuntimeError, match=r"Required pretrained weights \(`model_name='_tiny-vit', "
                                           r"pretrained='None'`\) could not be loaded. "):
        create_model('_tiny-vit', require_pretrained=True)
    with pytest.raises(RuntimeError, match='could not be loaded'):
        create_model_from_pretrained('_tiny-vit')


def test_unknown_model_kwarg_is_a_type_error(registry):
    with pytest.raises(TypeError):
        create_model('_tiny-vit', not_a_param=1)


def test_model_kwargs_replace_config_entries(registry):
    model = create_model('_tiny-vit', init_logit_bias=-10.0, nonscalar_logit_scale=True)
    assert model.logit_bias.shape == (1,) and model.logit_bias.item() == -10.0
    model = create_model('_tiny-vit', embed_dim=8)
    assert model.visual.proj.shape == (32, 8)


def test_force_overrides(registry):
    model = create_model('_tiny-vit', force_quick_gelu=True, force_patch_dropout=0.5,
                         force_image_size=48, force_context_length=8, output_dict=True)
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == 'QuickGELU'
    assert model.visual.patch_dropout.prob == 0.5
    assert model.visual.positional_embedding.shape[0] == 6 * 6 + 1
    assert model.positional_embedding.shape[0] == 8
    assert model.output_dict is True
    assert model.training  # returned in train mode, as in 3.3


# ---------------------------------------------------------------- precision


LP_SUFFIXES = ('conv1.weight', 'attn.in_proj_weight', 'attn.in_proj_bias', 'attn.out_proj.weight',
               'attn.out_proj.bias', 'c_fc.weight', 'c_fc.bias', 'c_proj.weight', 'c_proj.bias')


def _expected_lp(name: str) -> bool:
    """Naive rule of spec 01 §5.2 by state-dict name: matmul weights only."""
    return name.endswith(LP_SUFFIXES) or name in ('visual.proj', 'text_projection')


@pytest.mark.parametrize('precision,dtype', [('fp16', torch.float16), ('bf16', torch.bfloat16)])
def test_mixed_precision_dtype_table(registry, precision, dtype):
    model = create_model('_tiny-vit', precision=precision)
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == (dtype if _expected_lp(name) else torch.float32), name
    assert isinstance(model.ln_final, LayerNormFp32) and isinstance(model.visual.ln_pre, LayerNormFp32)
    assert model.attn_mask.dtype == torch.float32


@pytest.mark.parametrize('precision,dtype', [('pure_fp16', torch.float16), ('pure_bf16', torch.bfloat16)])
def test_pure_precision_casts_everything(registry, precision, dtype):
    model = create_model('_tiny-vit', precision=precision)
    assert all(t.dtype == dtype for t in model.state_dict().values())
    assert model.attn_mask.dtype == dtype
    assert type(model.ln_final) is LayerNorm


@pytest.mark.parametrize('precision', ['fp32', 'amp', 'amp_bf16', 'amp_bfloat16', 'whatever'])
def test_fp32_like_precisions(registry, precision):
    model = create_model('_tiny-vit', precision=precision)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())
    assert type(model.ln_final) is LayerNorm


def test_precision_helpers():
    assert convert_weights_to_fp16 is convert_weights_to_lp
    table = {'fp32': (None, None), 'fp16': (torch.float16, torch.float16), 'bf16': (torch.bfloat16, torch.bfloat16),
             'pure_fp16': (None, torch.float16), 'pure_bf16': (None, torch.bfloat16), 'amp': (None, None),
             'amp_bf16': (None, None)}
    for precision, (cast, inp) in table.items():
        assert get_cast_dtype(precision) == cast and get_input_dtype(precision) == inp, precision


def test_precision_with_checkpoint_matches_regular_path(registry, tmp_path, monkeypatch):
    """Meta-device loading gives exactly the values and dtypes of 3.3's cast-then-copy order."""
    import open_clip.factory as factory

    path = str(tmp_path / 'w.safetensors')
    save_file(CLIP(**TINY_VIT).state_dict(), path)
    for precision in ('fp16', 'bf16', 'pure_fp16', 'fp32'):
        fast = create_model('_tiny-vit', pretrained=path, precision=precision)
        with monkeypatch.context() as m:
            m.setattr(factory, '_BUILD_ON_META', False)
            slow = create_model('_tiny-vit', pretrained=path, precision=precision)
        fast_sd, slow_sd = fast.state_dict(), slow.state_dict()
        assert list(fast_sd) == list(slow_sd)
        for key in slow_sd:
            assert fast_sd[key].dtype == slow_sd[key].dtype and torch.equal(fast_sd[key], slow_sd[key]), key
        assert fast.attn_mask is not None and torch.equal(fast.attn_mask, slow.attn_mask)
        assert not any(t.is_meta for t in list(fast.parameters()) + list(fast.buffers()))


def test_checkpoint_load_does_not_initialise(registry, tmp_path, monkeypatch):
    """With a checkpoint the model is not randomly initialised (no init kernels run on real tensors)."""
    path = str(tmp_path / 'w.safetensors')
    save_file(CLIP(**TINY_VIT).state_dict(), path)
    calls = []
    original = torch.nn.init.normal_

    def spy(tensor, *args, **kwargs):
        calls.append(tensor.is_meta)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, 'normal_', spy)
    create_model('_tiny-vit', pretrained=path)
    assert calls and all(calls)  # every init call saw a meta tensor


# ---------------------------------------------------------------- preprocess cfg


def test_preprocess_cfg_sizes(registry):
    assert create_model('_tiny-vit').visual.preprocess_cfg['size'] == (32, 32)
    assert create_model('_tiny-rn').visual.preprocess_cfg['size'] == 64
    model = create_model('_tiny-vit', force_image_size=(48, 32))
    assert model.visual.preprocess_cfg['size'] == (48, 32)
    cfg = model.visual.preprocess_cfg
    assert cfg['mean'] == OPENAI_DATASET_MEAN and cfg['interpolation'] == 'bicubic'
    assert cfg['resize_mode'] == 'shortest' and cfg['mode'] == 'RGB' and cfg['fill_color'] == 0


def test_force_preprocess_cfg_and_image_overrides(registry):
    model = create_model('_tiny-vit', force_preprocess_cfg={'size': 40, 'std': None, 'bogus': 1})
    assert model.visual.preprocess_cfg['size'] == 40 and 'bogus' not in model.visual.preprocess_cfg
    model, train, val = create_model_and_transforms(
        '_tiny-vit', image_mean=(0.1, 0.2, 0.3), image_interpolation='bilinear', aug_cfg={'scale': (0.5, 1.0)})
    assert model.visual.preprocess_cfg['mean'] == (0.1, 0.2, 0.3)
    assert model.visual.image_mean == (0.1, 0.2, 0.3)
    assert model.visual.preprocess_cfg['interpolation'] == 'bilinear'
    from PIL import Image
    image = Image.new('RGB', (50, 40))
    assert train(image).shape == (3, 32, 32) and val(image).shape == (3, 32, 32)


@pytest.mark.slow
def test_preprocess_cfg_sizes_builtin():
    assert create_model('ViT-B-32').visual.preprocess_cfg['size'] == (224, 224)
    assert create_model('RN50').visual.preprocess_cfg['size'] == 224
    assert create_model('ViT-B-32', force_image_size=(256, 192)).visual.preprocess_cfg['size'] == (256, 192)


# ---------------------------------------------------------------- weights sources (downloads mocked)


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(1)
    source = CLIP(**TINY_VIT)
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), str(path))
    return source, str(path)


def test_pretrained_tag(registry, tiny_weights, monkeypatch):
    # the factory looks these up in its own globals, as 3.3 did, so that is where a test patches them
    import open_clip.factory as factory

    source, path = tiny_weights
    record = {'url': '', 'hf_hub': 'org/repo/', 'mean': (0.1, 0.1, 0.1), 'std': (0.2, 0.2, 0.2),
              'interpolation': 'bilinear', 'resize_mode': 'squash', 'quick_gelu': True}
    downloads = []
    monkeypatch.setattr(factory, 'get_pretrained_cfg', lambda m, t: record if t == 'mytag' else {})
    monkeypatch.setattr(factory, 'download_pretrained', lambda cfg, **kw: downloads.append(cfg) or path)
    with pytest.warns(UserWarning, match=r"QuickGELU mismatch .*quick_gelu=False.*'mytag' \(quick_gelu=True\)"):
        model = create_model('_tiny-vit', pretrained='mytag')
    assert torch.equal(model.visual.proj, source.visual.proj) and len(downloads) == 1
    cfg = model.visual.preprocess_cfg
    assert (cfg['mean'], cfg['interpolation'], cfg['resize_mode']) == ((0.1,) * 3, 'bilinear', 'squash')
    assert 'hf_hub' not in cfg
    # load_weights=False: no download (3.3 downloaded anyway), but the tag's preprocess values apply
    model = create_model('_tiny-vit', pretrained='mytag', load_weights=False, force_quick_gelu=True)
    assert len(downloads) == 1 and model.visual.preprocess_cfg['resize_mode'] == 'squash'
    monkeypatch.setattr(factory, 'download_pretrained', lambda cfg, **kw: 1 / 0)
    with pytest.raises(RuntimeError, match="Failed to download weights for tag 'mytag'"):
        create_model('_tiny-vit', pretrained='mytag', force_quick_gelu=True)


def test_hf_hub_model(tiny_weights, tmp_path, monkeypatch):
    import open_clip.factory as factory
    import open_clip.pretrained as pretrained

    source, path = tiny_weights
    config = tmp_path / 'open_clip_config.json'
    config.write_text(json.dumps({'model_cfg': TINY_VIT, 'preprocess_cfg': {'resize_mode': 'longest'}}))

    def fake_download(model_id, filename=None, revision=None, cache_dir=None):
        assert model_id == 'org/repo'
        return str(config) if filename == 'open_clip_config.json' else path

    def patch_hub(fn):  # config via the registry, weights via the factory's globals (as 3.3 looked them up)
        monkeypatch.setattr(pretrained, 'download_pretrained_from_hf', fn)
        monkeypatch.setattr(factory, 'download_pretrained_from_hf', fn)

    patch_hub(fake_download)
    model = create_model('hf-hub:org/repo', pretrained='ignored')
    assert torch.equal(model.visual.proj, source.visual.proj)
    assert model.visual.preprocess_cfg['resize_mode'] == 'longest'

    def no_weights(model_id, filename=None, revision=None, cache_dir=None):
        if filename == 'open_clip_config.json':
            return str(config)
        raise FileNotFoundError('no weights')

    patch_hub(no_weights)
    model = create_model('hf-hub:org/repo')  # weights failure: warning only, random init
    assert not torch.equal(model.visual.proj, source.visual.proj)

    def nothing(*args, **kwargs):
        raise FileNotFoundError('offline')

    patch_hub(nothing)
    with pytest.raises(RuntimeError, match='Failed initial config/weights load from HF Hub org/repo'):
        create_model('hf-hub:org/repo')


def test_tower_weight_paths(registry, tiny_weights, tmp_path):
    source, _ = tiny_weights
    visual_path = tmp_path / 'visual.safetensors'
    save_file(source.visual.state_dict(), str(visual_path))
    model = create_model('_tiny-vit', pretrained_image_path=str(visual_path),
                         pretrained_text_path=str(tmp_path / 'missing.pt'))
    assert torch.equal(model.visual.proj, source.visual.proj)
    assert not torch.equal(model.text_projection, source.text_projection)
    with pytest.raises(RuntimeError, match='could not be loaded'):  # tower files don't satisfy it
        create_model('_tiny-vit', pretrained_image_path=str(visual_path), require_pretrained=True)


def test_jit_option(registry):
    model = create_model('_tiny-vit', jit=True)
    assert isinstance(model, torch.jit.ScriptModule)
    text = torch.zeros(2, 12, dtype=torch.long)
    text[:, 3] = 99
    assert model.encode_text(text).shape == (2, 16)


def test_reexports():
    import open_clip.factory as factory
    import open_clip.model as model_module

    for name in ('parse_model_name', 'load_state_dict', 'load_checkpoint', '_MODEL_CONFIGS', '_MODEL_CONFIG_PATHS',
                 '_rescan_model_configs', 'HF_HUB_PREFIX', 'LOCAL_DIR_PREFIX', 'list_models', 'get_model_config',
                 'add_model_config'):
        assert hasattr(factory, name), name
    assert factory._MODEL_CONFIGS is config_registry._MODEL_CONFIGS
    for name in ('CLIP', 'CustomTextCLIP', 'CLIPVisionCfg', 'CLIPTextCfg', 'resize_pos_embed',
                 'resize_text_pos_embed', 'convert_to_custom_text_state_dict', 'trace_model',
                 '_build_vision_tower', '_build_text_tower', 'get_model_tokenize_cfg'):
        assert hasattr(model_module, name), name


@pytest.mark.parametrize('module,key,extra', [('open_clip.timm_model', 'vision_cfg', 'timm'),
                                              ('open_clip.hf_model', 'text_cfg', 'hf')])
def test_missing_optional_tower_names_the_extra(registry, monkeypatch, module, key, extra):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail like a missing module
    cfg = json.loads(json.dumps(TINY_VIT))
    cfg[key]['timm_model_name' if key == 'vision_cfg' else 'hf_model_name'] = 'some-model'
    registry['_tiny-optional'] = cfg
    with pytest.raises(RuntimeError, match=rf"'some-model'.*{module}.*'{extra}' extra"):
        create_model('_tiny-optional')


def test_meta_build_needs_an_initialiser_for_non_persistent_state():
    from open_clip.checkpoint import load_into_meta_model

    class WithBuffers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer('positions', torch.arange(5), persistent=False)

    class WithInit(WithBuffers):
        def init_non_persistent_buffers(self):
            self.positions.copy_(torch.arange(5))

    for cls in (WithBuffers, WithInit):
        with torch.device('meta'):
            model = cls()
        if cls is WithBuffers:
            with pytest.raises(UnsupportedMaterialize, match='positions|WithBuffers'):
                check_buffers_supported(model)
        else:
            check_buffers_supported(model)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f'{tmp}/w.safetensors'
        save_file(WithInit().state_dict(), path)
        state = torch.random.get_rng_state()
        loaded = load_into_meta_model(WithInit, path, prepare=lambda m: None)
        assert torch.equal(torch.random.get_rng_state(), state)  # no random init was drawn
        assert torch.equal(loaded.positions, torch.arange(5))
        assert torch.equal(loaded.lin.weight, load_file(path)['lin.weight'])
        assert load_into_meta_model(WithBuffers, path, prepare=lambda m: None) is None  # caller builds normally


def test_get_tokenizer_reexport():
    tokenizer_config = pytest.importorskip('open_clip.tokenizer_config')
    import open_clip.factory as factory

    assert factory.get_tokenizer is tokenizer_config.get_tokenizer


@pytest.mark.slow
def test_timm_tower_meta_loading_matches_regular_path(registry, tmp_path, monkeypatch):
    """A timm tower with non-persistent buffers (relative-position index) loads exactly via meta."""
    pytest.importorskip('timm')
    import open_clip.factory as factory

    registry['_tiny-timm'] = {
        'embed_dim': 16, 'custom_text': True,
        'vision_cfg': {'timm_model_name': 'vit_relpos_small_patch16_224', 'timm_pool': '', 'image_size': 224},
        'text_cfg': dict(TINY_VIT['text_cfg']),
    }
    path = str(tmp_path / 'w.safetensors')
    save_file(create_model('_tiny-timm').state_dict(), path)
    for precision in ('fp32', 'bf16'):
        fast = create_model('_tiny-timm', pretrained=path, precision=precision)
        with monkeypatch.context() as m:
            m.setattr(factory, '_BUILD_ON_META', False)
            slow = create_model('_tiny-timm', pretrained=path, precision=precision)
        fast_t = dict(list(fast.named_parameters()) + list(fast.named_buffers()))
        slow_t = dict(list(slow.named_parameters()) + list(slow.named_buffers()))
        assert fast_t.keys() == slow_t.keys()
        for key in slow_t:
            assert fast_t[key].dtype == slow_t[key].dtype and torch.equal(fast_t[key], slow_t[key]), key
