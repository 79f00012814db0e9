# Adds the cargo build of the static library to nginx's generated Makefile.
# The module table comes from nginx (not the crate's export-modules feature).

cat << END >> $NGX_MAKEFILE

$ngx_async_mirror_lib: $ngx_addon_dir/Cargo.toml $ngx_addon_dir/Cargo.lock $NGX_OBJS/ngx_auto_config.h
	cd $ngx_addon_dir && NGINX_BUILD_DIR="\$(CURDIR)/$NGX_OBJS" \\
		${NGX_CARGO:-cargo} rustc --release --locked --lib --crate-type staticlib --no-default-features \\
		--target-dir "\$(CURDIR)/$NGX_OBJS/addon/async_mirror"
	touch \$@

$NGX_OBJS/ngx_http_async_mirror_module$ngx_modext: $ngx_async_mirror_lib

END
