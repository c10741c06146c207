from tests.kit.profiles import load_profile

load_profile()
