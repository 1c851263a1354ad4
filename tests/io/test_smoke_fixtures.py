from bertflow.io import storage


def test_s3_endpoint_reached_through_storage(s3):
    fs, _ = storage.filesystem("s3://smoke/")
    fs.mkdir("smoke")
    storage.write_atomic("s3://smoke/a/b.txt", b"hello\nworld\n")
    assert storage.list_files("s3://smoke/a/") == ["s3://smoke/a/b.txt"]
    assert storage.read_bytes("s3://smoke/a/b.txt", 6, 11) == b"world"
