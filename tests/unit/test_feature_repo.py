from __future__ import annotations

from predictflow.encoding import FEATURES
from predictflow.feature_repo import load_definitions
from predictflow.settings import FeastSettings


def test_feature_view_holds_exactly_the_model_features() -> None:
    from feast import FeatureService, FeatureView
    from feast.types import Bool, Float64, Int64, String

    objects = load_definitions(FeastSettings().repo_path)
    (view,) = [o for o in objects if isinstance(o, FeatureView)]
    (service,) = [o for o in objects if isinstance(o, FeatureService)]
    types = {f.name: f.dtype for f in view.features}
    assert set(types) == set(FEATURES)
    assert types["senior_citizen"] == Bool
    assert types["tenure"] == Int64
    assert types["total_charges"] == Float64
    assert types["contract"] == String
    assert service.name == FeastSettings().feature_service
    assert view.entities == ["customer"]
