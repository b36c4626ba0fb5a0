"""Build glue that pyproject.toml cannot express (decision 0046).

The repo's tools/ folder installs as the package `uscst_tools`: a top-level
`tools` in site-packages would collide with any other distribution shipping
one. Inside the repo it stays `tools` (tests and `python -m tools.uscstd`
from the root); the shipped modules import each other relatively, so they
work under either name. The dev-only scripts below run from a checkout only
(they read or write tests/ and docs/, or measure the code) and stay out of
the wheel.
"""
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

TOOLS = "uscst_tools"
KERNEL_LAYERS = ["kshim", "scst_core", "iscsi_scst", "vdisk"]
DEV_ONLY = {"bench_lib", "ceph_cluster", "fault_campaign", "fuzz_iscsi", "gen_docs", "gen_guide",
            "scale_diagram", "soak", "trace_cost", "cmdcost"}


class build_py_without_dev_tools(build_py):
    """build_py that leaves the DEV_ONLY modules of uscst_tools out."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (m[0] == TOOLS and m[1] in DEV_ONLY)]


kernel = find_packages(include=[f"{p}*" for p in KERNEL_LAYERS])
tools = [TOOLS + p.removeprefix("tools") for p in find_packages(include=["tools", "tools.*"])]
setup(
    packages=kernel + tools,
    package_dir={p: p.replace(TOOLS, "tools", 1).replace(".", "/") for p in tools},
    cmdclass={"build_py": build_py_without_dev_tools},
)
