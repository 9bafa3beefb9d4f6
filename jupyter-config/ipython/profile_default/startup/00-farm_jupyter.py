# Written by `farm-jupyter enable`; `farm-jupyter disable` removes it.
try:
    get_ipython().extension_manager.load_extension('farm_jupyter')  # noqa: F821
except Exception as exc:  # a broken install must not break the kernel
    print(f'farm_jupyter not loaded: {exc}')
