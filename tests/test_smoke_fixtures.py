from tests.conftest import Api, make_character


def test_a_character_round_trips_on_each_store(api: Api) -> None:
    created = make_character(api, description="Curandera 🌿 de Oaxaca, שלום")
    got = api.client.get(f"/v1/characters/{created['id']}", headers=api.acme).json()
    assert got == created
