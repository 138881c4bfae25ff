//! Products, devices, users and bindings. Every change that SPEC §4 turns into a message
//! writes it in the same transaction (the store's outbox).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use iotsync_core::{DeviceName, IdentityId, IotId, ProductKey};
use iotsync_store::{
    Binding, BindingFilter, Device, DeviceWithSecret, NewProduct, NewUser, Page, Product,
    PropertyValue, User, UserPatch,
};

use super::error::{ApiResult, ErrorBody};
use super::extract::{id, ApiJson, ApiQuery};
use super::projects::{page_of, project_id, PageQuery};
use super::ApiState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProduct {
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// The product's category, e.g. "Light".
    #[schema(min_length = 1, max_length = 64)]
    pub device_type: String,
    /// 4 to 32 letters and digits; generated when absent.
    #[schema(pattern = "^[A-Za-z0-9]{4,32}$")]
    pub product_key: Option<String>,
}

#[utoipa::path(post, path = "/projects/{project_id}/products", tag = "registry",
    params(("project_id" = String, Path)), request_body = CreateProduct,
    responses((status = 201, body = Product), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_product(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<CreateProduct>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    let pid = project_id(&pid)?;
    let product_key = b
        .product_key
        .as_deref()
        .map(|s| id::<ProductKey>("productKey", s))
        .transpose()?;
    let p = st
        .registry
        .create_product(
            &pid,
            &NewProduct {
                name: b.name,
                device_type: b.device_type,
                product_key,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[utoipa::path(get, path = "/projects/{project_id}/products", tag = "registry",
    params(("project_id" = String, Path), PageQuery), responses((status = 200, body = Page<Product>)))]
pub async fn list_products(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<Product>>> {
    let page = page_of(q.page_no, q.page_size)?;
    Ok(Json(
        st.registry.list_products(&project_id(&pid)?, page).await?,
    ))
}

#[utoipa::path(get, path = "/projects/{project_id}/products/{product_key}", tag = "registry",
    params(("project_id" = String, Path), ("product_key" = String, Path)),
    responses((status = 200, body = Product), (status = 404, body = ErrorBody)))]
pub async fn get_product(
    State(st): State<ApiState>,
    Path((pid, pk)): Path<(String, String)>,
) -> ApiResult<Json<Product>> {
    let pk = id::<ProductKey>("productKey", &pk)?;
    Ok(Json(
        st.registry.get_product(&project_id(&pid)?, &pk).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDevice {
    /// 4 to 32 characters: letters, digits and -_@.:
    #[schema(pattern = "^[A-Za-z0-9_@.:-]{4,32}$")]
    pub device_name: String,
}

#[utoipa::path(post, path = "/projects/{project_id}/products/{product_key}/devices", tag = "registry",
    params(("project_id" = String, Path), ("product_key" = String, Path)), request_body = CreateDevice,
    responses((status = 201, description = "Created; deviceSecret is shown here (and in the lifecycle create message)", body = DeviceWithSecret),
              (status = 409, body = ErrorBody)))]
pub async fn create_device(
    State(st): State<ApiState>,
    Path((pid, pk)): Path<(String, String)>,
    ApiJson(b): ApiJson<CreateDevice>,
) -> ApiResult<(StatusCode, Json<DeviceWithSecret>)> {
    let pid = project_id(&pid)?;
    let pk = id::<ProductKey>("productKey", &pk)?;
    let dn = id::<DeviceName>("deviceName", &b.device_name)?;
    let d = st.registry.create_device(&pid, &pk, &dn).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeviceQuery {
    #[param(nullable = false, minimum = 1)]
    pub page_no: Option<u32>,
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub page_size: Option<u32>,
    #[param(nullable = false)]
    pub product_key: Option<String>,
}

#[utoipa::path(get, path = "/projects/{project_id}/devices", tag = "registry",
    params(("project_id" = String, Path), DeviceQuery), responses((status = 200, body = Page<Device>)))]
pub async fn list_devices(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> ApiResult<Json<Page<Device>>> {
    let page = page_of(q.page_no, q.page_size)?;
    let pk = q
        .product_key
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| id::<ProductKey>("productKey", s))
        .transpose()?;
    Ok(Json(
        st.registry
            .list_devices(&project_id(&pid)?, pk.as_ref(), page)
            .await?,
    ))
}

fn device_path(pid: &str, iot: &str) -> ApiResult<(iotsync_core::ProjectId, IotId)> {
    Ok((project_id(pid)?, id::<IotId>("iotId", iot)?))
}

#[utoipa::path(get, path = "/projects/{project_id}/devices/{iot_id}", tag = "registry",
    params(("project_id" = String, Path), ("iot_id" = String, Path)),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody)))]
pub async fn get_device(
    State(st): State<ApiState>,
    Path((pid, iot)): Path<(String, String)>,
) -> ApiResult<Json<Device>> {
    let (pid, iot) = device_path(&pid, &iot)?;
    Ok(Json(st.registry.get_device(&pid, &iot).await?))
}

#[utoipa::path(delete, path = "/projects/{project_id}/devices/{iot_id}", tag = "registry",
    params(("project_id" = String, Path), ("iot_id" = String, Path)),
    responses((status = 204, description = "Deleted: its bindings are removed (Unbind messages), then the lifecycle delete message"),
              (status = 404, body = ErrorBody)))]
pub async fn delete_device(
    State(st): State<ApiState>,
    Path((pid, iot)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (pid, iot) = device_path(&pid, &iot)?;
    st.registry.delete_device(&pid, &iot).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/projects/{project_id}/devices/{iot_id}/enable", tag = "registry",
    params(("project_id" = String, Path), ("iot_id" = String, Path)), responses((status = 200, body = Device)))]
pub async fn enable_device(
    State(st): State<ApiState>,
    Path((pid, iot)): Path<(String, String)>,
) -> ApiResult<Json<Device>> {
    let (pid, iot) = device_path(&pid, &iot)?;
    Ok(Json(
        st.registry.set_device_enabled(&pid, &iot, true).await?,
    ))
}

#[utoipa::path(post, path = "/projects/{project_id}/devices/{iot_id}/disable", tag = "registry",
    params(("project_id" = String, Path), ("iot_id" = String, Path)), responses((status = 200, body = Device)))]
pub async fn disable_device(
    State(st): State<ApiState>,
    Path((pid, iot)): Path<(String, String)>,
) -> ApiResult<Json<Device>> {
    let (pid, iot) = device_path(&pid, &iot)?;
    Ok(Json(
        st.registry.set_device_enabled(&pid, &iot, false).await?,
    ))
}

#[utoipa::path(get, path = "/projects/{project_id}/devices/{iot_id}/properties", tag = "registry",
    params(("project_id" = String, Path), ("iot_id" = String, Path)),
    responses((status = 200, description = "Last reported value of each property", body = Vec<PropertyValue>)))]
pub async fn device_properties(
    State(st): State<ApiState>,
    Path((pid, iot)): Path<(String, String)>,
) -> ApiResult<Json<Vec<PropertyValue>>> {
    let (pid, iot) = device_path(&pid, &iot)?;
    st.ingest.settle_properties().await;
    Ok(Json(st.registry.device_properties(&pid, &iot).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUser {
    #[schema(min_length = 1, max_length = 64)]
    pub login_name: String,
    #[serde(default)]
    #[schema(max_length = 64)]
    pub nick_name: String,
    #[serde(default)]
    #[schema(max_length = 32)]
    pub phone: String,
    #[serde(default)]
    #[schema(max_length = 128)]
    pub email: String,
}

#[utoipa::path(post, path = "/projects/{project_id}/users", tag = "registry",
    params(("project_id" = String, Path)), request_body = CreateUser,
    responses((status = 201, body = User), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let u = st
        .registry
        .create_user(
            &project_id(&pid)?,
            &NewUser {
                login_name: b.login_name,
                nick_name: b.nick_name,
                phone: b.phone,
                email: b.email,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(u)))
}

#[utoipa::path(get, path = "/projects/{project_id}/users", tag = "registry",
    params(("project_id" = String, Path), PageQuery), responses((status = 200, body = Page<User>)))]
pub async fn list_users(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<User>>> {
    let page = page_of(q.page_no, q.page_size)?;
    Ok(Json(
        st.registry.list_users(&project_id(&pid)?, page).await?,
    ))
}

fn user_path(pid: &str, ident: &str) -> ApiResult<(iotsync_core::ProjectId, IdentityId)> {
    Ok((project_id(pid)?, id::<IdentityId>("identityId", ident)?))
}

#[utoipa::path(get, path = "/projects/{project_id}/users/{identity_id}", tag = "registry",
    params(("project_id" = String, Path), ("identity_id" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(st): State<ApiState>,
    Path((pid, ident)): Path<(String, String)>,
) -> ApiResult<Json<User>> {
    let (pid, ident) = user_path(&pid, &ident)?;
    Ok(Json(st.registry.get_user(&pid, &ident).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchUser {
    #[schema(max_length = 64)]
    pub nick_name: Option<String>,
    #[schema(max_length = 32)]
    pub phone: Option<String>,
    #[schema(max_length = 128)]
    pub email: Option<String>,
}

#[utoipa::path(patch, path = "/projects/{project_id}/users/{identity_id}", tag = "registry",
    params(("project_id" = String, Path), ("identity_id" = String, Path)), request_body = PatchUser,
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub async fn update_user(
    State(st): State<ApiState>,
    Path((pid, ident)): Path<(String, String)>,
    ApiJson(b): ApiJson<PatchUser>,
) -> ApiResult<Json<User>> {
    let (pid, ident) = user_path(&pid, &ident)?;
    let patch = UserPatch {
        nick_name: b.nick_name,
        phone: b.phone,
        email: b.email,
    };
    Ok(Json(st.registry.update_user(&pid, &ident, &patch).await?))
}

#[utoipa::path(delete, path = "/projects/{project_id}/users/{identity_id}", tag = "registry",
    params(("project_id" = String, Path), ("identity_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(st): State<ApiState>,
    Path((pid, ident)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (pid, ident) = user_path(&pid, &ident)?;
    st.registry.delete_user(&pid, &ident).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBinding {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub identity_id: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub iot_id: String,
    /// 1 (or true) = owner, 0 (or false) = shared.
    #[schema(schema_with = owned_schema)]
    pub owned: Owned,
}

/// `owned` as the document states it: 1 or 0, or a boolean (what [`Owned`] accepts and
/// [`bind`] checks).
fn owned_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([0, 1])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .description(Some("1 (or true) = owner, 0 (or false) = shared."))
        .into()
}

/// `owned` as the platform writes it (1/0), or as a boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Owned {
    Flag(u8),
    Bool(bool),
}

#[utoipa::path(post, path = "/projects/{project_id}/bindings", tag = "registry",
    params(("project_id" = String, Path)), request_body = CreateBinding,
    responses((status = 201, body = Binding), (status = 409, body = ErrorBody)))]
pub async fn bind(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<CreateBinding>,
) -> ApiResult<(StatusCode, Json<Binding>)> {
    let pid = project_id(&pid)?;
    let ident = id::<IdentityId>("identityId", &b.identity_id)?;
    let iot = id::<IotId>("iotId", &b.iot_id)?;
    let owned = match b.owned {
        Owned::Flag(1) | Owned::Bool(true) => true,
        Owned::Flag(0) | Owned::Bool(false) => false,
        Owned::Flag(n) => {
            return Err(super::error::ApiError::invalid(
                "owned",
                format!("owned must be 1 (owner) or 0 (shared), got {n}"),
            ))
        }
    };
    let bnd = st.registry.bind(&pid, &ident, &iot, owned).await?;
    Ok((StatusCode::CREATED, Json(bnd)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct BindingQuery {
    #[param(nullable = false, minimum = 1)]
    pub page_no: Option<u32>,
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub page_size: Option<u32>,
    #[param(nullable = false)]
    pub identity_id: Option<String>,
    #[param(nullable = false)]
    pub iot_id: Option<String>,
}

#[utoipa::path(get, path = "/projects/{project_id}/bindings", tag = "registry",
    params(("project_id" = String, Path), BindingQuery), responses((status = 200, body = Page<Binding>)))]
pub async fn list_bindings(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<BindingQuery>,
) -> ApiResult<Json<Page<Binding>>> {
    let page = page_of(q.page_no, q.page_size)?;
    let ident = q
        .identity_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| id::<IdentityId>("identityId", s))
        .transpose()?;
    let iot = q
        .iot_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| id::<IotId>("iotId", s))
        .transpose()?;
    let filter = BindingFilter {
        identity: ident.as_ref(),
        iot_id: iot.as_ref(),
    };
    Ok(Json(
        st.registry
            .list_bindings(&project_id(&pid)?, filter, page)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/projects/{project_id}/bindings/{identity_id}/{iot_id}", tag = "registry",
    params(("project_id" = String, Path), ("identity_id" = String, Path), ("iot_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn unbind(
    State(st): State<ApiState>,
    Path((pid, ident, iot)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let (pid, ident) = user_path(&pid, &ident)?;
    let iot = id::<IotId>("iotId", &iot)?;
    st.registry.unbind(&pid, &ident, &iot).await?;
    Ok(StatusCode::NO_CONTENT)
}
