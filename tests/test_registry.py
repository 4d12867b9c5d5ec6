import pytest

from xbt_bench.errors import NotFoundError, XbtError
from xbt_bench.registry import Registry


def test_register_get_list_and_aliases() -> None:
    methods: Registry[object] = Registry("method", hint="xbt-bench methods list")

    @methods.register("procrustes", aliases=("svd",))
    def fit() -> str:
        return "fitted"

    methods.register("identity", len)
    assert methods.names() == ["procrustes", "identity"]
    assert methods.get("svd") is fit
    assert "svd" in methods and "slerp" not in methods
    assert len(methods) == 2


def test_miss_suggests_closest_name() -> None:
    pairs: Registry[int] = Registry("pair", hint="xbt-bench pairs list")
    pairs.register("b32-to-l14", 1)
    pairs.register("b32-to-h14", 2)
    with pytest.raises(NotFoundError) as info:
        pairs.get("b32-to-l15")
    assert str(info.value) == (
        "pair 'b32-to-l15' not found; did you mean 'b32-to-l14'? (see `xbt-bench pairs list`)"
    )


def test_lazy_entry_is_imported_only_on_get() -> None:
    registry: Registry[object] = Registry("dataset")
    registry.register("broken", "xbt_bench_no_such_module:loader")
    registry.register("colours", "colorsys:rgb_to_hsv")
    assert registry.names() == ["broken", "colours"]  # listing imports nothing
    import colorsys

    assert registry.get("colours") is colorsys.rgb_to_hsv
    with pytest.raises(ModuleNotFoundError):
        registry.get("broken")


def test_duplicate_registration_is_an_error() -> None:
    registry: Registry[int] = Registry("method")
    registry.register("a", 1)
    with pytest.raises(XbtError, match="registered twice"):
        registry.register("a", 2)
