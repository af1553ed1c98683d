"""The settings base every Gatehouse settings section shares: the environment beats the config file."""

from __future__ import annotations

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class EnvFirstSettings(BaseSettings):
    """Values from the environment win over those given at construction (the file's); no .env, no secrets dir."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)
